# frozen_string_literal: true

require "socket"

# Helpers for specs that drive MegaMutex::Native::Client directly against
# the example's own memcached (`server`, a MemcachedServer): a client of
# their own, the server's request counters, a take, and a holder that keeps
# a key changing hands. Included by the specs that count requests or
# attempts (round_trips, poll_probe, waiting, seniority).
module NativeClientHelpers
  # A native client on the configured servers (io timeout 1 s, one connection).
  # @return [MegaMutex::Native::Client]
  def new_client
    MegaMutex::Native::Client.new(MegaMutex.configuration.server_addresses, 1000, 1000, 1)
  end

  # @param names [Array<String>] memcached stats counters
  # @return [Hash{String => Integer}] their values now
  def counters(*names)
    stats = server.stats
    names.to_h { |name| [name, stats.fetch(name).to_i] }
  end

  # @return [Hash{String => Integer}] each counter's growth from `before` to `after`
  def delta(before, after)
    after.to_h { |name, value| [name, value - before.fetch(name)] }
  end

  # Takes `key` for `token` at once (it must be free); returns the state
  # _acquire filled (@version, @fencing_token...), a stand-in for Lock::Hold.
  def take(client, key, token)
    state = Object.new
    expect(client._acquire(state, key, token, 10, 0, 0.002, 0.05)).to be(true)
    state
  end

  # Waits `seconds` for `key`, which someone else holds all along, with
  # backoff 2 ms..50 ms; returns the attempts the C wait loop made.
  def attempts_while_waiting(key, seconds)
    client = new_client
    state = Object.new
    expect(client._acquire(state, key, "waiter", 10, seconds, 0.002, 0.05)).to be(false)
    state.instance_variable_get(:@attempts)
  ensure
    client&.close
  end

  # Hands `key` from holder to holder every `every` seconds (a plain set:
  # the lock is never free) while the block runs. The first holder is in
  # before the block starts, so a waiter never finds the lock free.
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
    wait_for(message: "the first holder") { !first.empty? || !thread.alive? }
    thread.value unless thread.alive? # raises what stopped it
    yield
  ensure
    stop = true
    thread&.join
  end
end
