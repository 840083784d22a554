# frozen_string_literal: true

require "tmpdir"
require "fileutils"
require "socket"

RSpec.describe MegaMutex::Configuration do
  subject(:config) { described_class.new }

  around do |example|
    saved = ENV.delete("MEMCACHE_SERVERS")
    example.run
  ensure
    ENV["MEMCACHE_SERVERS"] = saved
  end

  it "defaults to localhost:11211 (127.0.0.1:11211 once canonical) and the original namespace" do
    expect(config.memcache_servers).to eq(["127.0.0.1:11211"])
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

  describe "canonical server names (one server, one name: locks are placed by hashing it)" do
    {
      "localhost" => "127.0.0.1:11211",
      "LOCALHOST:11211" => "127.0.0.1:11211",
      "localhost.:11212" => "127.0.0.1:11212",
      "127.0.0.1" => "127.0.0.1:11211",
      "MC1.Example.COM." => "mc1.example.com:11211",
      "mc1.example.com:11211" => "mc1.example.com:11211",
      "[0:0:0:0:0:0:0:1]" => "[::1]:11211",
      "[::1]:11211" => "[::1]:11211",
      "[FE80::A:0:0:1]:11213" => "[fe80::a:0:0:1]:11213",
      "[::FFFF:127.0.0.1]:11212" => "127.0.0.1:11212",
      "/run//memcached/./mc.sock" => "/run/memcached/mc.sock",
      " mc1:11212 " => "mc1:11212"
    }.each do |written, canonical|
      it "reads #{written.inspect} as #{canonical.inspect}" do
        config.memcache_servers = [written]
        expect(config.memcache_servers).to eq([canonical])
      end
    end

    it "counts a server written several ways once" do
      config.memcache_servers = ["localhost", "127.0.0.1:11211", "LocalHost.", "[::ffff:127.0.0.1]"]
      expect(config.memcache_servers).to eq(["127.0.0.1:11211"])
      expect(config.server_addresses).to eq([["127.0.0.1", 11_211]])
    end

    it "hands the servers to the client in one order, whatever order they were written in" do
      list = ["mc2:11211", "mc1:11212", "mc1", "[::1]", "/run/mc.sock"]
      orders = list.permutation.first(24).map do |order|
        config.memcache_servers = order
        config.server_addresses
      end
      expect(orders.uniq.size).to eq(1)
    end

    it "does not resolve host names (no DNS at configure time)" do
      config.memcache_servers = ["no-such-host.invalid"]
      expect(config.memcache_servers).to eq(["no-such-host.invalid:11211"])
    end
  end

  describe "limits, checked at the setter" do
    it "takes #{MegaMutex::Configuration::MAX_SERVERS} servers and rejects #{MegaMutex::Configuration::MAX_SERVERS + 1}, naming the limit" do
      max = MegaMutex::Configuration::MAX_SERVERS
      config.memcache_servers = Array.new(max) { |i| "127.0.0.1:#{20_000 + i}" }
      expect(config.server_addresses.size).to eq(max)
      # The native client takes that many (it opens no connection yet).
      MegaMutex::Native::Client.new(config.server_addresses, 1000, 1000, 1).close
      expect { config.memcache_servers = Array.new(max + 1) { |i| "127.0.0.1:#{20_000 + i}" } }
        .to raise_error(ArgumentError, /memcache_servers: at most #{max} servers \(got #{max + 1}\)/)
      expect(config.server_addresses.size).to eq(max) # unchanged
    end

    it "counts servers after removing duplicates" do
      config.memcache_servers = Array.new(MegaMutex::Configuration::MAX_SERVERS) { |i| "127.0.0.1:#{20_000 + i}" } * 2
      expect(config.memcache_servers.size).to eq(MegaMutex::Configuration::MAX_SERVERS)
    end

    it "takes a host name of 253 characters and rejects longer ones (the 1,100-character host used to fail at the first lock)" do
      longest = (["a" * 63] * 4).join(".")[0, 253]
      config.memcache_servers = [longest]
      expect(config.memcache_servers).to eq(["#{longest}:11211"])
      MegaMutex::Native::Client.new(config.server_addresses, 1000, 1000, 1).close
      expect { config.memcache_servers = ["#{longest}x"] }.to raise_error(ArgumentError, /memcache_servers.*254 characters.*253/)
      expect { MegaMutex.configure { |c| c.memcache_servers = ["h" * 1100] } }.to raise_error(ArgumentError, /memcache_servers.*1100.*253/)
    end

    it "takes a socket path of #{MegaMutex::Configuration::MAX_SOCKET_PATH} bytes, and locks through it; rejects longer ones" do
      dir = Dir.mktmpdir("mm")
      path = File.join(dir, "s" * (MegaMutex::Configuration::MAX_SOCKET_PATH - dir.bytesize - 1))
      expect(path.bytesize).to eq(MegaMutex::Configuration::MAX_SOCKET_PATH)
      user = Process.uid.zero? ? ["-u", "root"] : []
      pid = Process.spawn("memcached", "-s", path, "-U", "0", *user, out: File::NULL, err: File::NULL, pgroup: true)
      # The file appears before memcached listens on it: wait for a connection.
      wait_for(within: 5, message: "memcached on #{path}") do
        UNIXSocket.open(path, &:close)
        true
      rescue SystemCallError
        false
      end
      MegaMutex.configure { |c| c.memcache_servers = [path] }
      expect(MegaMutex.with_distributed_mutex("via-socket") { MegaMutex.get_current_lock("via-socket") }).to be_a(String)
      expect { config.memcache_servers = ["#{path}x"] }.to raise_error(ArgumentError, /memcache_servers.*108 bytes.*107/)
    ensure
      MegaMutex.reset_configuration!
      if pid
        Process.kill(:KILL, pid)
        Process.wait(pid)
      end
      FileUtils.rm_rf(dir) if dir
    end
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
    ["::1"] => /IPv6 address in brackets/,
    ["fe80::1:11211"] => /IPv6 address in brackets/,
    ["[::1"] => /expected/,
    ["[mc1]:11211"] => /not an IPv6 address/,
    ["[::1%eth0]"] => /not an IPv6 address/,
    ["127.1"] => /IPv4 address as four decimal numbers/,
    ["127.0.0.01"] => /IPv4 address as four decimal numbers/,
    ["0x7f.0.0.1"] => /IPv4 address as four decimal numbers/,
    ["2130706433"] => /IPv4 address as four decimal numbers/,
    ["256.0.0.1"] => /IPv4 address as four decimal numbers/,
    ["mc..example"] => /empty label/,
    ["."] => /empty label/,
    ["#{'a' * 64}.example"] => /longer than 63/,
    ["/run/mc sock"] => /whitespace/,
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
    namespace: ["", nil, "has space", "a#b", "x" * 101, "new\nline", 5, "app:jobs", ":"],
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
      expect(out.string).to match(/released .*logged.* held [\d.]+ ms/)
    end
  end
end
