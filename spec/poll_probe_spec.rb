# frozen_string_literal: true

# A waiter's polls while the same holder keeps the lock (issue #13): after
# two attempts that found the same item (token and CAS), the next one reads
# first ("gets key" alone, 1 request) and only takes in full (add + the
# fence's incr + gets, 3 requests) when the key is absent or ours - in the
# same attempt. Requests are counted with the server's own stats, so these
# hold on any machine. The first attempt of every acquisition stays the full
# one-round-trip take (round_trips_spec.rb, hot_path_spec.rb).
# ext/mega_mutex/store_memcached.c, "The probe", says why two.
RSpec.describe "polling a held lock (the probe)" do
  let(:server) { MemcachedServer.new.start }

  before { MegaMutex.configure { |c| c.memcache_servers = [server.address] } }
  after { server.stop }

  include NativeClientHelpers

  # The server counters these examples compare.
  def counts
    counters(*%w[cmd_get get_hits get_misses cmd_set incr_hits incr_misses])
  end

  def ivar(state, name)
    state.instance_variable_get(name)
  end

  it "costs one get per poll while one holder keeps the lock, after two full takes" do
    holder = new_client
    waiter = new_client
    key = key_for("probe")
    take(holder, key, "tok-holder")
    before = counts
    state = Object.new
    expect(waiter._acquire(state, key, "tok-waiter", 10, 0.5, 0.002, 0.05)).to be(false)
    d = delta(before, counts)
    attempts = ivar(state, :@attempts)
    expect(attempts).to be >= 5
    expect(ivar(state, :@holder)).to eq("tok-holder")
    # Every attempt reads once; only the first two add and increment the fence.
    expect(d).to include("cmd_get" => attempts, "get_hits" => attempts, "cmd_set" => 2)
    expect(d.fetch("incr_hits") + d.fetch("incr_misses")).to eq(2)
    requests = d.fetch("cmd_get") + d.fetch("cmd_set") + d.fetch("incr_hits") + d.fetch("incr_misses")
    expect(requests.fdiv(attempts)).to be < 1.5
    expect(server.get(key)).to eq("tok-holder")
  ensure
    [holder, waiter].each { |c| c&.close }
  end

  it "takes the lock in the same attempt when the probe finds it released, with a larger fencing token" do
    holder = new_client
    waiter = new_client
    key = key_for("probe")
    held = take(holder, key, "tok-holder")
    before = counts
    state = Object.new
    thread = Thread.new { waiter._acquire(state, key, "tok-waiter", 10, 10, 0.002, 0.01) }
    # Several probes (gets alone) have been made: the lock is then released.
    wait_for(message: "the waiter's probes") do
      d = delta(before, counts)
      d.fetch("cmd_get") >= 5 && d.fetch("cmd_set") == 2
    end
    expect(holder._release(key, "tok-holder", ivar(held, :@version))).to be(true)
    expect(thread.value).to be(true)
    expect(server.get(key)).to eq("tok-waiter")
    expect(ivar(state, :@fencing_token)).to be > ivar(held, :@fencing_token)
    expect(waiter._release(key, "tok-waiter", ivar(state, :@version))).to be(true)
    expect(server.get(key)).to be_nil
  ensure
    thread&.join
    [holder, waiter].each { |c| c&.close }
  end

  it "reports the new holder when the lock changed hands between two polls" do
    holder = new_client
    waiter = new_client
    key = key_for("probe")
    take(holder, key, "tok-holder")
    before = counts
    state = Object.new
    thread = Thread.new { waiter._acquire(state, key, "tok-waiter", 10, 1.0, 0.002, 0.01) }
    wait_for(message: "the waiter's probes") { delta(before, counts).fetch("cmd_get") >= 5 }
    # Another process takes over (the item replaced, as a release and a take would).
    expect(server.command("set #{key} 0 10 9\r\ntok-other")).to eq("STORED\r\n")
    expect(thread.value).to be(false)
    expect(ivar(state, :@holder)).to eq("tok-other")
    expect(server.get(key)).to eq("tok-other")
  ensure
    thread&.join
    [holder, waiter].each { |c| c&.close }
  end

  it "starts every acquisition with the full take: a freed lock is taken by one attempt, in one round trip" do
    holder = new_client
    waiter = new_client
    key = key_for("probe")
    held = take(holder, key, "tok-holder")
    expect(waiter._acquire(Object.new, key, "tok-waiter", 10, 0.1, 0.002, 0.01)).to be(false)
    expect(holder._release(key, "tok-holder", ivar(held, :@version))).to be(true)
    before = counts
    state = take(waiter, key, "tok-waiter")
    expect(ivar(state, :@attempts)).to eq(1)
    expect(delta(before, counts)).to include("cmd_get" => 1, "cmd_set" => 1, "incr_hits" => 1)
    expect(server.get(key)).to eq("tok-waiter")
  ensure
    [holder, waiter].each { |c| c&.close }
  end

  it "never takes a lock on the probe: a key that holds the waiter's own token is taken by the full take" do
    holder = new_client
    waiter = new_client
    key = key_for("probe")
    take(holder, key, "tok-holder")
    state = Object.new
    thread = Thread.new { waiter._acquire(state, key, "tok-waiter", 10, 10, 0.002, 0.01) }
    before = counts
    wait_for(message: "the waiter's probes") { delta(before, counts).fetch("cmd_get") >= 4 }
    # The waiter's own token appears (as an earlier add of its own would leave it).
    expect(server.command("set #{key} 0 10 10\r\ntok-waiter")).to eq("STORED\r\n")
    expect(thread.value).to be(true)
    # Taken by a full take: its fence was incremented, so it has a token.
    expect(ivar(state, :@fencing_token)).to be > 0
    expect(ivar(state, :@version)).not_to be_nil
  ensure
    thread&.join
    [holder, waiter].each { |c| c&.close }
  end
end
