# frozen_string_literal: true

# The hot path: one uncontended with_distributed_mutex cycle on memcached,
# in Ruby objects, wall and caller-thread CPU time, and server gets per cycle
# with 4 threads on distinct keys.
#
#   bundle exec ruby bench/hot_path.rb [LIBDIR]
#
# LIBDIR (default: this checkout's lib/) lets the same script time an older
# checkout's Ruby layer against the same server.
$LOAD_PATH.unshift(ARGV[0] || File.expand_path("../lib", __dir__))
require "mega_mutex"
require_relative "../spec/support/servers"

server = Servers::Memcached.new.start
MegaMutex.configure do |c|
  c.memcache_servers = [server.address]
  c.namespace = "hotpath"
end
id = "bench"
2000.times { MegaMutex.with_distributed_mutex(id) { nil } }

before = GC.stat(:total_allocated_objects)
1000.times { MegaMutex.with_distributed_mutex(id) { nil } }
puts format("objects per cycle            %6.2f", (GC.stat(:total_allocated_objects) - before) / 1000.0)
ids = Array.new(1000) { |i| "fresh-#{i}".freeze }
before = GC.stat(:total_allocated_objects)
ids.each { |fresh| MegaMutex.with_distributed_mutex(fresh) { nil } }
puts format("objects per cycle, new ids   %6.2f", (GC.stat(:total_allocated_objects) - before) / 1000.0)

walls = []
cpus = []
3.times do
  wall = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  cpu = Process.clock_gettime(Process::CLOCK_THREAD_CPUTIME_ID)
  20_000.times { MegaMutex.with_distributed_mutex(id) { nil } }
  cpus << (Process.clock_gettime(Process::CLOCK_THREAD_CPUTIME_ID) - cpu) / 20_000 * 1e6
  walls << (Process.clock_gettime(Process::CLOCK_MONOTONIC) - wall) / 20_000 * 1e6
end
puts format("cycle, wall µs (median of 3) %6.1f", walls.sort[1])
puts format("cycle, caller CPU µs         %6.1f", cpus.sort[1])

gets = -> { server.stats["cmd_get"].to_i }
start = gets.call
rounds = 2000
Array.new(4) { |t| Thread.new { rounds.times { MegaMutex.with_distributed_mutex("t#{t}") { Thread.pass } } } }.each(&:join)
puts format("4 threads, gets per cycle    %6.3f", (gets.call - start) / (4.0 * rounds))
server.stop
