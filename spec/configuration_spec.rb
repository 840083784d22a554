# frozen_string_literal: true

RSpec.describe MegaMutex::Configuration do
  subject(:config) { described_class.new }

  around do |example|
    saved = ENV.delete("MEMCACHE_SERVERS")
    example.run
  ensure
    ENV["MEMCACHE_SERVERS"] = saved
  end

  it "defaults to localhost:11211 and the original namespace" do
    expect(config.memcache_servers).to eq(["localhost:11211"])
    expect(config.namespace).to eq("mega_mutex")
    expect(config.default_timeout).to be_nil
    expect(config.lock_ttl).to eq(30)
  end

  it "takes the servers from MEMCACHE_SERVERS (comma-separated) when set" do
    ENV["MEMCACHE_SERVERS"] = "mc1, mc2:11212"
    expect(described_class.new.memcache_servers).to eq(["mc1:11211", "mc2:11212"])
  end

  it "normalises server forms" do
    config.memcache_servers = ["mc1", "mc2:11212", "[::1]:11213", "[::1]", "/run/memcached.sock", "10.0.0.1:1"]
    expect(config.memcache_servers).to eq(["mc1:11211", "mc2:11212", "[::1]:11213", "[::1]:11211", "/run/memcached.sock", "10.0.0.1:1"])
    expect(config.server_addresses).to include(["::1", 11_213], ["/run/memcached.sock", 0])
  end

  {
    [] => /must not be empty/,
    [""] => /empty/,
    ["mc1:0"] => /out of range/,
    ["mc1:65536"] => /out of range/,
    ["mc1:port"] => /not a number/,
    ["mc1:-1"] => /not a number/,
    ["mc 1"] => /host|expected/,
    ["mc1:11211:3"] => /not a number/,
    [nil] => /must be a String/,
    [11_211] => /must be a String/,
    "mc1,,mc2" => /empty/,
    :mc1 => /must be an Array/
  }.each do |bad, message|
    it "rejects memcache_servers = #{bad.inspect} naming the setting" do
      expect { config.memcache_servers = bad }.to raise_error(ArgumentError, /memcache_servers/) { |e|
        expect(e.message).to match(message)
      }
    end
  end

  {
    lock_ttl: [0, -1, 0.5, Float::NAN, Float::INFINITY, "30", nil, 2_592_000],
    default_timeout: [-0.1, Float::NAN, "1", :forever],
    connect_timeout: [0, -1, "1", nil, Float::NAN, 61],
    io_timeout: [0, -1, "1", nil, Float::NAN],
    backoff_min: [0, -1, "x", nil],
    backoff_max: [0, -1, "x", nil],
    namespace: ["", nil, "has space", "a#b", "x" * 101, "new\nline", 5],
    logger: [Object.new, "STDOUT"]
  }.each do |setting, bad_values|
    bad_values.each do |bad|
      it "rejects #{setting} = #{bad.inspect.slice(0, 30)} with an ArgumentError naming it" do
        expect { config.public_send("#{setting}=", bad) }.to raise_error(ArgumentError, /#{setting}/)
      end
    end
  end

  describe "backend" do
    it "defaults to :memcached" do
      expect(config.backend).to eq(:memcached)
    end

    it "accepts :memory and :memcached, as Symbols or Strings" do
      config.backend = :memory
      expect(config.backend).to eq(:memory)
      config.backend = "memcached"
      expect(config.backend).to eq(:memcached)
      config.backend = "memory"
      expect(config.backend).to eq(:memory)
    end

    [:redis, "Memory", nil, 1, :memcache, ""].each do |bad|
      it "rejects backend = #{bad.inspect}, naming the setting and the backends there are" do
        expect { config.backend = bad }.to raise_error(ArgumentError) { |e|
          expect(e.message).to include("backend", ":memcached", ":memory")
        }
        expect(config.backend).to eq(:memcached)
      end
    end

    it "survives dup, and a failed configure keeps the backend in force" do
      MegaMutex.configure { |c| c.backend = :memory }
      expect(MegaMutex.configuration.dup.backend).to eq(:memory)
      expect { MegaMutex.configure { |c| c.backend = :memory; c.backend = :redis } }.to raise_error(ArgumentError, /backend/)
      expect(MegaMutex.configuration.backend).to eq(:memory)
      MegaMutex.configure { |c| c.backend = :memcached }
      expect(MegaMutex.configuration.backend).to eq(:memcached)
    end
  end

  it "rounds a fractional lock_ttl up to whole seconds" do
    config.lock_ttl = 1.2
    expect(config.lock_ttl).to eq(2)
  end

  describe "MegaMutex.configure" do
    it "applies the settings" do
      MegaMutex.configure { |c| c.lock_ttl = 12 }
      expect(MegaMutex.configuration.lock_ttl).to eq(12)
      expect(MegaMutex.configuration).to be_frozen
    end

    it "fails at configure, changes nothing, and names the bad setting" do
      before = MegaMutex.configuration
      expect { MegaMutex.configure { |c| c.memcache_servers = ["mc1:99999"] } }
        .to raise_error(ArgumentError, /memcache_servers.*out of range/)
      expect(MegaMutex.configuration).to equal(before)
    end

    it "checks settings that depend on each other" do
      expect { MegaMutex.configure { |c| c.backoff_min = 1; c.backoff_max = 0.5 } }
        .to raise_error(ArgumentError, /backoff_min.*backoff_max/)
    end

    it "sends locks to the newly configured servers" do
      other = MemcachedServer.new.start
      MegaMutex.configure { |c| c.memcache_servers = [other.address] }
      MegaMutex.with_distributed_mutex("moved") do
        expect(other.get(key_for("moved"))).not_to be_nil
        expect(memcached.get(key_for("moved"))).to be_nil
      end
    ensure
      other&.stop
    end

    it "logs each step at debug level when a logger is set" do
      require "logger"
      require "stringio"
      out = StringIO.new
      MegaMutex.configure { |c| c.logger = Logger.new(out).tap { |l| l.level = :debug } }
      MegaMutex.with_distributed_mutex("logged") { nil }
      expect(out.string).to match(/attempting to lock.*logged/).and match(/locked .*logged/).and match(/released .*logged/)
    end
  end
end
