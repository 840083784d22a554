# frozen_string_literal: true

# What the quorum costs: one uncontended lock cycle (take, empty block,
# release) and 4 threads contending for one id, with
#   - MegaMutex :quorum on 3 memcached servers (every request to all three
#     in parallel; the take also records the fencing token),
#   - MegaMutex :memcached on 1 server (the lock on one server: no survival),
#   - redlock-rb on 3 redis servers (its servers asked one after another),
# all on loopback, servers started here (-M for memcached, no persistence for
# redis) and stopped at the end.
#
#   bundle exec ruby bench/quorum.rb [--cycles N]
#
# Medians of 5 runs; figures vary with the machine and its load.
$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "optparse"
require "mega_mutex"
require_relative "../spec/support/quorum_servers"

cycles = 3000
OptionParser.new { |p| p.on("--cycles N", Integer, "cycles per run (default 3000)") { |v| cycles = v } }.parse!

def median(values)
  values.sort[values.size / 2]
end

def time_cycles(cycles)
  t = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  cycles.times { yield }
  (Process.clock_gettime(Process::CLOCK_MONOTONIC) - t) / cycles * 1e6
end

# Sections per second with 4 threads on one id.
def contended(seconds = 2)
  count = 0
  mutex = Mutex.new
  stop = Process.clock_gettime(Process::CLOCK_MONOTONIC) + seconds
  Array.new(4) do
    Thread.new do
      while Process.clock_gettime(Process::CLOCK_MONOTONIC) < stop
        yield
        mutex.synchronize { count += 1 }
      end
    end
  end.each(&:join)
  count / seconds.to_f
end

quorum = QuorumServers.start(3)
single = Servers::Memcached.new(args: %w[-M -m 64]).start
rows = []

# lock_ttl 2 (= quorum_max_ttl, as the suite's helper ages the servers for);
# an empty block never renews, so the lease length does not change the cost.
[["MegaMutex :quorum, 3 memcached", ->(c) { QuorumServers.configure(c, quorum) }],
 ["MegaMutex :memcached, 1 server", lambda { |c|
   c.backend = :memcached
   c.memcache_servers = [single.address]
   c.lock_ttl = 2
 }]].each do |label, configure|
  MegaMutex.reset_configuration!
  MegaMutex.configure do |c|
    configure.call(c)
    c.namespace = "bench"
  end
  500.times { MegaMutex.with_distributed_mutex("bench") { nil } }
  us = median(Array.new(5) { time_cycles(cycles) { MegaMutex.with_distributed_mutex("bench") { nil } } })
  per_s = contended { MegaMutex.with_distributed_mutex("hot", timeout: 10) { nil } }
  rows << [label, us, per_s]
end

# The floor: the same store calls without the Ruby layer (Native::Client's
# _acquire and _release on one quorum client, no Lock, no pool, no renewer).
begin
  MegaMutex.reset_configuration!
  MegaMutex.configure { |c| QuorumServers.configure(c, quorum) }
  client = MegaMutex.configuration.new_client
  state = Object.new
  floor = lambda do
    client._acquire(state, "bench:floor", "floor-token", 2, 0, 0.002, 0.05) or raise "floor: not taken"
    client._release("bench:floor", "floor-token", state.instance_variable_get(:@version))
  end
  500.times { floor.call }
  us = median(Array.new(5) { time_cycles(cycles) { floor.call } })
  rows.insert(1, ["  its floor (the C store alone)", us, nil])
  client.close
end

if Servers::Redis.available?
  require "redlock"
  redis = Array.new(3) { Servers.start(:redis) }
  client = Redlock::Client.new(redis.map(&:url), retry_count: 1_000_000, retry_delay: 25, retry_jitter: 25)
  cycle = lambda do |key|
    info = nil
    info = client.lock(key, 30_000) until info
    client.unlock(info)
  end
  500.times { cycle.call("bench") }
  us = median(Array.new(5) { time_cycles(cycles) { cycle.call("bench") } })
  per_s = contended { cycle.call("hot") }
  rows << ["redlock-rb 2.1, 3 redis", us, per_s]
  redis.each(&:stop)
else
  rows << ["redlock-rb, 3 redis", nil, nil]
end

puts format("%-34s %16s %22s", "", "uncontended µs", "4 threads, sections/s")
rows.each do |label, us, per_s|
  puts format("%-34s %16s %22s", label, us ? format("%.0f", us) : "n/a (no redis-server)", per_s ? format("%.0f", per_s) : "")
end
quorum.each(&:stop)
single.stop
