# frozen_string_literal: true

# libmemcached places each lock on a server by hashing the server's
# "host:port" text (ketama). Two processes that write the same servers
# differently must still agree on every lock's server, or the second takes a
# lock the first holds (issue 9, point 8: 572 of 1,000 ids moved between
# 127.0.0.1 and localhost).
RSpec.describe "the same servers, written differently" do
  let(:servers) { Array.new(2) { MemcachedServer.new.start } }
  let(:ids) { Array.new(300) { |i| "spelled-#{i}" } }

  after do
    MegaMutex.reset_configuration!
    servers.each(&:stop)
  end

  def configure(spellings)
    MegaMutex.configure { |c| c.memcache_servers = spellings }
  end

  # @return [Array<Integer>] for each id, the port of the server its lock lives on
  def placement
    MegaMutex.pool.with { |client| ids.map { |id| client._server_for(key_for(id)).last } }
  end

  spellings = {
    "localhost" => ->(port) { "localhost:#{port}" },
    "LOCALHOST. (case, trailing dot)" => ->(port) { "LOCALHOST.:#{port}" },
    "an IPv4-mapped IPv6 address" => ->(port) { "[::ffff:127.0.0.1]:#{port}" }
  }

  spellings.each do |name, spell|
    it "places every lock on the same server for 127.0.0.1 and #{name}" do
      configure(servers.map(&:address))
      expected = placement
      expect(expected.uniq.size).to eq(2) # both servers are used
      configure(servers.reverse.map { |s| spell.call(s.port) })
      expect(placement).to eq(expected)
    end
  end

  it "places every lock on the same server with and without the default port (11211)" do
    # Port 11211 may be taken on this machine: placement needs no connection.
    configure(["mc-a", "mc-b:11211", "mc-c:11212"])
    expected = MegaMutex.pool.with { |client| ids.map { |id| client._server_for(key_for(id)) } }
    configure(["MC-C:11212", "mc-a:11211", "mc-b."])
    expect(MegaMutex.pool.with { |client| ids.map { |id| client._server_for(key_for(id)) } }).to eq(expected)
    expect(expected.map(&:first).uniq.size).to eq(3)
  end

  it "lets no process take a lock held by another that wrote the servers differently" do
    configure(servers.map(&:address))
    locks = ids.map { |id| MegaMutex::Lock.new(id, timeout: 5).tap(&:lock) }
    other = servers.map { |s| "localhost:#{s.port}" }.join(",")
    out, err, status = run_ruby(<<~RUBY, env: { "MEMCACHE_SERVERS" => other })
      taken = #{ids.inspect}.select { |id| MegaMutex::Lock.new(id).try_lock }
      puts "taken=\#{taken.size}"
    RUBY
    expect(status).to be_success, "#{out}\n#{err}"
    expect(out).to eq("taken=0\n")
  ensure
    locks&.each(&:unlock)
  end
end
