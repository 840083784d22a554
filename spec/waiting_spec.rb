# frozen_string_literal: true

# How a waiter polls (ext/mega_mutex/lock.c): exponential backoff from
# backoff_min to backoff_max, restarted from the minimum whenever the holder
# read back has changed since the last attempt. Attempts are counted by the
# C wait loop itself; the comparisons are between two runs of the same
# length on the same machine, with a wide margin.
RSpec.describe "waiting" do
  let(:server) { MemcachedServer.new.start }

  before { MegaMutex.configure { |c| c.memcache_servers = [server.address] } }
  after { server.stop }

  include NativeClientHelpers

  it "polls a lock held by one holder less and less often, about once per backoff_max" do
    key = key_for("steady")
    server.command("set #{key} 0 30 6\r\nholder")
    attempts = attempts_while_waiting(key, 1.0)
    # 2, 4, ... 32 ms, then pauses in [25, 50] ms: at most ~45 attempts in 1 s
    expect(attempts).to be_between(10, 60)
  end

  it "polls a lock that keeps changing hands from backoff_min again at each change" do
    key = key_for("steady")
    server.command("set #{key} 0 30 6\r\nholder")
    steady = attempts_while_waiting(key, 1.0)
    churning = nil
    churn(key_for("busy"), 0.02) { churning = attempts_while_waiting(key_for("busy"), 1.0) }
    expect(churning).to be > 2 * steady
  end
end
