# frozen_string_literal: true

require "socket"

# How a waiter polls (ext/mega_mutex/lock.c): exponential backoff from
# backoff_min to backoff_max, restarted from the minimum whenever the holder
# read back has changed since the last attempt. Attempts are counted by the
# C wait loop itself; the comparisons are between two runs of the same
# length on the same machine, with a wide margin.
RSpec.describe "waiting" do
  let(:server) { MemcachedServer.new.start }

  before { MegaMutex.configure { |c| c.memcache_servers = [server.address] } }
  after { server.stop }

  def new_client
    MegaMutex::Native::Client.new(MegaMutex.configuration.server_addresses, 1000, 1000, 1)
  end

  # Waits `seconds` for `key`, held by someone else all along; returns the
  # attempts the wait loop made.
  def attempts_while_waiting(key, seconds)
    client = new_client
    state = Object.new
    expect(client._acquire(state, key, "waiter", 10, seconds, 0.002, 0.05)).to be(false)
    state.instance_variable_get(:@attempts)
  ensure
    client&.close
  end

  # Hands `key` from holder to holder (a plain set: the lock is never free)
  # every `every` seconds until stopped.
  def churn(key, every)
    stop = false
    first = Queue.new
    thread = Thread.new do
      Socket.tcp("127.0.0.1", server.port) do |sock|
        n = 0
        until stop
          n += 1
          sock.write("set #{key} 0 30 #{"holder-#{n}".bytesize}\r\nholder-#{n}\r\n")
          sock.gets # STORED
          first << true if n == 1
          sleep every
        end
      end
    end
    # held before the waiter starts: it must never find the lock free
    wait_for(message: "the first holder") { !first.empty? || !thread.alive? }
    thread.value unless thread.alive? # raises what stopped it
    yield
  ensure
    stop = true
    thread&.join
  end

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
