# frozen_string_literal: true

# The uncontended cycle is two round trips - take (noreply add + gets) and
# release (one cas) - and the one-round-trip release is only used when the
# CAS it sends is proven to belong to this server process (the "witness" in
# ext/mega_mutex/store_memcached.c). Requests are counted with the server's
# own stats, so these hold on any machine, however slow.
RSpec.describe "round trips" do
  let(:server) { MemcachedServer.new.start }

  before { MegaMutex.configure { |c| c.memcache_servers = [server.address] } }
  after { server.stop }

  include NativeClientHelpers

  # The server counters these examples compare.
  def counts
    counters(*%w[cmd_get cmd_set cas_hits cas_badval cas_misses delete_hits delete_misses get_hits])
  end

  # A stand-in for Lock::Hold: _acquire records @version etc. on it.
  def new_state
    Object.new
  end

  it "an uncontended cycle costs the server one get and two stores (add, cas), nothing more" do
    MegaMutex.with_distributed_mutex("warm") { nil } # connection open, renewer started
    before = counts
    50.times { MegaMutex.with_distributed_mutex("x") { nil } }
    d = delta(before, counts)
    expect(d).to include("cmd_get" => 50, "get_hits" => 50, "cmd_set" => 100, "cas_hits" => 50,
                         "cas_badval" => 0, "delete_hits" => 0, "delete_misses" => 0)
    expect(MegaMutex.get_current_lock("x")).to be_nil
  end

  # The block form releases on the connection it took on, so the
  # one-round-trip release is the common case under threads too. The block
  # lets the other threads run (as any block doing I/O does): a release that
  # went back to the pool for a connection would often get another thread's
  # (about 1.7 gets per cycle before the fix).
  it "with 4 threads on distinct keys, the block form costs at most 1.05 gets per cycle" do
    cycles = 200
    4.times { |t| MegaMutex.with_distributed_mutex("warm#{t}") { nil } }
    before = counts
    threads = Array.new(4) do |t|
      Thread.new { cycles.times { MegaMutex.with_distributed_mutex("t#{t}") { Thread.pass } } }
    end
    threads.each(&:join)
    d = delta(before, counts)
    expect(d.fetch("cmd_get").fdiv(4 * cycles)).to be <= 1.05
    expect(d).to include("cas_hits" => 4 * cycles, "cas_badval" => 0)
  end

  it "a release through another connection than the take's checks the owner first (one more get)" do
    c1 = new_client
    c2 = new_client
    key = key_for("x")
    state = new_state
    expect(c1._acquire(state, key, "tok-a", 10, 0, 0.002, 0.05)).to be(true)
    before = counts
    expect(c2._release(key, "tok-a", state.instance_variable_get(:@version))).to be(true)
    expect(delta(before, counts)).to include("cmd_get" => 1, "cas_hits" => 1)
    expect(server.get(key)).to be_nil
  ensure
    [c1, c2].each { |c| c&.close }
  end

  it "a release after a renewal by another connection still succeeds (the CAS changed under it)" do
    c1 = new_client
    c2 = new_client
    key = key_for("x")
    state = new_state
    expect(c1._acquire(state, key, "tok-a", 10, 0, 0.002, 0.05)).to be(true)
    expect(c2._extend(key, "tok-a", 10)).to be(true)
    before = counts
    expect(c1._release(key, "tok-a", state.instance_variable_get(:@version))).to be(true)
    # The one-round-trip cas is refused (cas_badval); the owner is read and
    # the lock released with its current CAS.
    expect(delta(before, counts)).to include("cas_badval" => 1, "cmd_get" => 1, "cas_hits" => 1)
    expect(server.get(key)).to be_nil
  ensure
    [c1, c2].each { |c| c&.close }
  end

  it "a release on a connection that broke since the take never sends its old CAS to the new server" do
    c1 = new_client
    c2 = nil
    key = key_for("x")
    state = new_state
    expect(c1._acquire(state, key, "tok-a", 10, 0, 0.002, 0.05)).to be(true)
    old_cas = state.instance_variable_get(:@version).unpack1("Q<")
    server.restart
    c2 = new_client
    expect(c2._acquire(new_state, key, "tok-b", 10, 0, 0.002, 0.05)).to be(true)
    # The collision the witness guards against: the new holder's item has
    # the very CAS the old holder remembers (a restarted server counts from 0).
    expect(server.command("gets #{key}")[/\AVALUE \S+ \d+ \d+ (\d+)/, 1].to_i).to eq(old_cas)
    expect(c1._release(key, "tok-a", state.instance_variable_get(:@version))).to be(false)
    expect(server.get(key)).to eq("tok-b")
  ensure
    [c1, c2].each { |c| c&.close }
  end

  it "an unknown version (nil, or anything but what _acquire gave) releases by checking the owner" do
    c1 = new_client
    key = key_for("x")
    [nil, 12, "short"].each do |version|
      expect(c1._acquire(new_state, key, "tok-a", 10, 0, 0.002, 0.05)).to be(true)
      before = counts
      expect(c1._release(key, "tok-a", version)).to be(true)
      expect(delta(before, counts)).to include("cmd_get" => 1, "cas_hits" => 1)
    end
    expect(server.get(key)).to be_nil
  ensure
    c1&.close
  end
end
