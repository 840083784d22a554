# frozen_string_literal: true

require "spec_helper"
require "logger"
require "stringio"
require_relative "support/quorum_servers"
require_relative "support/quorum_review_proxy"

# A hostile review of the :quorum backend: each example is a way found to
# grant a lock twice, or to leave it held by nobody, and shows that it is
# closed. Each example has three servers of its own (started with -M, old
# enough to count), since it breaks them; a QuorumReviewProxy puts a fault
# between this process's client and one server, which the example still
# reaches directly.
RSpec.describe "The :quorum backend under review" do
  before(:all) { @sets = QuorumServers.start_sets(self.class.descendant_filtered_examples.size, 3) }
  after(:all) { @sets.flatten.each(&:stop) }

  let(:servers) { @sets.pop or raise "no servers left" }
  let(:proxies) { [] }
  let(:logged) { StringIO.new }

  after do
    proxies.each(&:stop)
    servers.each(&:stop)
  end

  def proxy(server)
    QuorumReviewProxy.new(server.port).start.tap { |p| proxies << p }
  end

  # The :quorum backend on `addresses` (quorum_max_ttl and lock_ttl 2 s).
  def configure(addresses)
    MegaMutex.configure do |c|
      c.backend = :quorum
      c.memcache_servers = addresses
      c.quorum_max_ttl = QuorumServers::MAX_TTL
      c.lock_ttl = QuorumServers::MAX_TTL
      c.namespace = @namespace
      c.io_timeout = 0.5
      c.connect_timeout = 0.5
      c.logger = Logger.new(logged)
    end
  end

  # A client of its own (new connections) on `addresses`.
  def separate_client(addresses)
    config = MegaMutex::Configuration.new
    config.backend = :quorum
    config.memcache_servers = addresses
    config.quorum_max_ttl = QuorumServers::MAX_TTL
    config.io_timeout = 0.5
    config.connect_timeout = 0.5
    config.validate!.new_client
  end

  # Takes `key` at once for `token` on `client`: true, false or the error.
  def take(client, key, token)
    client._acquire(Object.new, key, token, QuorumServers::MAX_TTL, 0, 0.002, 0.05)
  rescue MegaMutex::Error => e
    e
  end

  def plant(server, key, token)
    expect(server.command("add #{key} 0 60 #{token.bytesize}\r\n#{token}")).to eq("STORED\r\n")
  end

  def outcome
    yield
  rescue MegaMutex::Error => e
    e
  end

  # Removals refused by a majority (the connection closes before the cas
  # reaches the server: a network fault, or a full -M server refusing the
  # write) left the lock on 2 of 3 servers while unlock said it was given
  # back: held by nobody, and not cleaned up, until the lease ended.
  it "does not report a release as done while a majority still holds the lock; the clean-up removes it" do
    p0 = proxy(servers[0])
    p1 = proxy(servers[1])
    configure([p0.address, p1.address, servers[2].address])
    key = key_for("job")
    lock = MegaMutex::Lock.new("job")
    expect(lock.try_lock).to be(true)
    token = servers[0].get(key)
    [p0, p1].each { |p| p.inject("cas", :close_before, if: ->(words) { words[1] == key }) }
    released = outcome { lock.unlock }
    still = servers.count { |s| s.get(key) == token }
    expect(still).to eq(2) # the removals did not reach them
    expect(released).to be_a(MegaMutex::ConnectionError), "unlock returned #{released.inspect} with the lock still on #{still} of 3 servers"
    expect(released.message).to match(/failed to release a lock: the lock is still ours on 2 of the 3 servers/)
    [p0, p1].each(&:clear)
    wait_for(within: 10, message: "the clean-up to remove the lock") { servers.none? { |s| s.get(key) == token } }
  end

  # A take that won only a minority is undone; when the undo could not
  # remove it (the removal refused on one server, the other's reply lost
  # after its add went out, and lost again when read back), try_lock said
  # "busy" and left its own lock on 2 of 3 servers: once the other holder
  # had gone, nobody could take it until the lease ended, and nothing
  # cleaned it up.
  it "does not report a take as busy when the undo of its minority win left the lock on a majority; the clean-up removes it" do
    p0 = proxy(servers[0])
    p1 = proxy(servers[1])
    configure([p0.address, p1.address, servers[2].address])
    key = key_for("job")
    plant(servers[2], key, "someone-else")
    p0.inject("cas", :close_before, if: ->(words) { words[1] == key })
    p1.inject("gets", :drop_and_close, if: ->(words) { words[1] == key }) # the add went out; its answer is lost
    lock = MegaMutex::Lock.new("job")
    taken = outcome { lock.try_lock }
    expect(servers[2].delete(key)).to be(true) # the other holder is gone
    token = servers[0].get(key)
    expect(servers[1].get(key)).to eq(token) # our take, left on a majority
    expect(taken).to be_a(MegaMutex::ConnectionError), "try_lock returned #{taken.inspect} with its own lock left on 2 of 3 servers"
    expect(taken.message).to match(/failed to take a lock \(and give back what it won\): the lock is still ours on 2 of the 3 servers/)
    [p0, p1].each(&:clear)
    wait_for(within: 10, message: "the clean-up to remove the lock") { servers.none? { |s| s.get(key) == token } }
  end

  # A take that won a majority but could not record its fencing token there
  # is undone; when the undo's removals are refused by a majority too, the
  # take must not report "busy" (try_lock false) with its own lock left on
  # 2 of 3 servers. This attack held: the take already said ConnectionError.
  it "does not report a take as busy while its own undone lock is left on a majority; the clean-up removes it" do
    p0 = proxy(servers[0])
    p1 = proxy(servers[1])
    configure([p0.address, p1.address, servers[2].address])
    key = key_for("job")
    fence = "~f#{key}"
    [p0, p1].each do |p|
      p.inject("add", :server_error, message: "NOT_STORED", if: ->(words) { words[1] == fence })
      p.inject("cas", :close_before, if: ->(words) { words[1] == key })
    end
    lock = MegaMutex::Lock.new("job")
    taken = outcome { lock.try_lock }
    left = servers.map { |s| s.get(key) }.compact
    expect(left.size).to eq(2) # on the two servers whose undo was refused
    expect(taken).to be_a(MegaMutex::ConnectionError), "try_lock returned #{taken.inspect} with its own lock left on #{left.size} of 3 servers"
    expect(lock.owned?).to be(false)
    [p0, p1].each(&:clear)
    wait_for(within: 10, message: "the clean-up to remove the lock") { servers.none? { |s| s.get(key) } }
  end
end
