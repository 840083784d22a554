# frozen_string_literal: true

# Waiting by seniority (ext/mega_mutex/lock.c, poll_store): on a lock that
# keeps changing hands, a waiter that has seen k holders come and go restarts
# its backoff from 16 x backoff_min / k (never below backoff_min), so
# newcomers poll rarely and those that have waited through many changes poll
# from backoff_min. Attempts are counted by the C wait loop; the two windows
# compared run on the same machine in the same example, with a wide margin.
RSpec.describe "waiting by seniority" do
  let(:server) { MemcachedServer.new.start }

  before { MegaMutex.configure { |c| c.memcache_servers = [server.address] } }
  after { server.stop }

  include NativeClientHelpers

  it "polls rarely while new to a busy lock and from backoff_min once it has seen many changes" do
    key = key_for("busy")
    newcomer = senior = nil
    churn(key, 0.01) do
      early = attempts_while_waiting(key, 0.08)
      whole = attempts_while_waiting(key, 0.6)
      newcomer = early / 0.08
      senior = (whole - early) / 0.52 # a wait's attempts after its first 0.08 s
    end
    # Restarting every waiter from backoff_min polls about as often early as
    # late; by seniority the late rate is several times the early one.
    expect(senior).to be > 1.5 * newcomer
  end

  # Courtesy: a process that took a key after waiting for it pauses a little
  # (backoff_min/8 to backoff_min/4) before its next try of that key, so
  # that the waiters it has just given it back to get their turn. With a
  # backoff_min of 0.4 s that pause is at least 50 ms.
  it "pauses before taking again a key it had to wait for, and only such a key" do
    client = MegaMutex::Native::Client.new(MegaMutex.configuration.server_addresses, 1000, 1000, 1)
    take = lambda do |key|
      state = Object.new
      expect(client._acquire(state, key, "me", 10, 30, 0.4, 0.8)).to be(true)
      expect(client._release(key, "me", state.instance_variable_get(:@version))).to be(true)
      [state.instance_variable_get(:@attempts), state.instance_variable_get(:@waited)]
    end

    plain = key_for("plain")
    expect(take.call(plain).first).to eq(1)
    _, again = take.call(plain)
    expect(again).to be < 0.05 # taken at its first try before: no pause

    waited_for = key_for("waited-for")
    server.command("set #{waited_for} 0 30 9\r\nsomeone-1")
    gets = server.stats["cmd_get"].to_i
    taker = Thread.new { take.call(waited_for) }
    wait_for(message: "the waiter's second attempt") { server.stats["cmd_get"].to_i >= gets + 2 }
    server.command("delete #{waited_for}")
    attempts, = taker.value
    expect(attempts).to be > 1
    _, again = take.call(waited_for)
    expect(again).to be >= 0.05
  ensure
    client&.close
  end

  it "still polls a lock held by one holder at most about once per backoff_max" do
    key = key_for("steady")
    server.command("set #{key} 0 30 6\r\nholder")
    expect(attempts_while_waiting(key, 1.0)).to be_between(10, 60)
  end
end
