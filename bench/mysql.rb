# frozen_string_literal: true

# backend :mysql (MariaDB named locks) against a private mariadbd, beside
# memcached on the same machine:
#
#   bundle exec ruby bench/mysql.rb [CYCLES] [HANDOFFS]
#
# 1. The uncontended cycle: with_distributed_mutex with an empty block, one
#    thread, over TCP and over the unix socket (memcached over TCP for
#    comparison). Median and p99 of batches of 100 cycles, in µs per cycle.
#    The C floor in MARIADB_NOTES.md: GET_LOCK + RELEASE_LOCK 72-75 µs
#    (socket), 98-108 µs (TCP).
# 2. The handoff: 4 processes take one lock in turn (empty block); the
#    handoff is the time from one holder leaving its block to the next one,
#    in another process, entering its block (both stamped with CLOCK_MONOTONIC, which all the
#    processes share): it covers the release, the server waking the waiter
#    blocked in GET_LOCK, and the waiter's return to Ruby. MARIADB_NOTES.md:
#    172 µs median (socket), 248 µs (TCP), from C with 8 waiters.
$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "mega_mutex"
require_relative "../spec/support/servers"

CYCLES = Integer(ARGV[0] || 5000)
HANDOFFS = Integer(ARGV[1] || 2000)
WORKERS = 4

def percentile(sorted, fraction)
  sorted[[(sorted.size * fraction).ceil - 1, 0].max]
end

def now
  Process.clock_gettime(Process::CLOCK_MONOTONIC)
end

# µs per cycle: [median, p99] over batches of 100.
def cycle(label)
  id = "bench-cycle"
  500.times { MegaMutex.with_distributed_mutex(id) { nil } }
  batches = Array.new(CYCLES / 100) do
    t = now
    100.times { MegaMutex.with_distributed_mutex(id) { nil } }
    (now - t) / 100 * 1e6
  end.sort
  puts format("%-34s median %7.1f µs   p99 %7.1f µs", label, percentile(batches, 0.5), percentile(batches, 0.99))
end

# Handoff latencies in µs between consecutive holders of one lock.
def handoff(label)
  reader, writer = IO.pipe
  per_worker = HANDOFFS / WORKERS
  go_r, go_w = IO.pipe
  pids = Array.new(WORKERS) do
    fork do
      reader.close
      go_w.close
      go_r.read(1) # all start together
      stamps = Array.new(per_worker) do
        MegaMutex.with_distributed_mutex("bench-handoff") do
          entered = now
          [entered, now, Process.pid]
        end
      end
      writer.write(Marshal.dump(stamps))
      writer.close
      exit!(0)
    end
  end
  writer.close
  go_r.close
  go_w.write("x" * WORKERS)
  go_w.close
  data = reader.read
  reader.close
  pids.each { |pid| Process.wait(pid) }
  stamps = []
  io = StringIO.new(data)
  stamps.concat(Marshal.load(io)) until io.eof? # rubocop:disable Security/MarshalLoad -- our own children
  stamps.sort_by!(&:first)
  # Only a lock passing to another process is a handoff (a holder that
  # takes it straight back waited for nobody).
  pairs = stamps.each_cons(2).reject { |(_, _, a), (_, _, b)| a == b }
  gaps = pairs.map { |(_, left, _), (entered, _, _)| (entered - left) * 1e6 }.sort
  puts format("%-34s median %7.1f µs   p99 %7.1f µs   (%d of %d turns to another process)",
              label, percentile(gaps, 0.5), percentile(gaps, 0.99), gaps.size, stamps.size - 1)
end

require "stringio"
db = Servers::MariaDB.new.start
mc = Servers::Memcached.new.start
begin
  puts "MegaMutex #{MegaMutex::VERSION}, Ruby #{RUBY_VERSION}, #{`mariadbd --version`.strip[/Ver \S+/]}, " \
       "#{CYCLES} cycles, #{HANDOFFS} handoffs"
  MegaMutex.configure { |c| c.backend = :mysql; c.mysql_url = db.url; c.namespace = "bench" }
  cycle("mysql, TCP: cycle")
  handoff("mysql, TCP: handoff")
  MegaMutex.configure { |c| c.backend = :mysql; c.mysql_url = db.socket_url; c.namespace = "bench" }
  cycle("mysql, unix socket: cycle")
  handoff("mysql, unix socket: handoff")
  MegaMutex.configure { |c| c.backend = :memcached; c.memcache_servers = [mc.address]; c.namespace = "bench" }
  cycle("memcached, TCP: cycle")
  handoff("memcached, TCP: handoff (polling)")
ensure
  MegaMutex.reset_configuration!
  db.stop
  mc.stop
end
