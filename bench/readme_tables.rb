# frozen_string_literal: true

# Prints the README's benchmark tables (Markdown) from the results files, so
# the README shows exactly what one `rake bench` run measured: bench/run.rb's
# (latest.json), then the MariaDB rows of bench/mysql.rb (mysql.json) when
# that file is there:
#
#   ruby bench/readme_tables.rb [bench/results/latest.json [bench/results/mysql.json]]
#   ruby bench/readme_tables.rb --mysql [bench/results/mysql.json]   # the MariaDB rows alone
require "json"

# The MariaDB rows (bench/mysql.rb's results): one table, every contender,
# then MegaMutex :mysql / with_advisory_lock on each transport.
def mysql_tables(path)
  r = JSON.parse(File.read(path))
  m = r["machine"]
  cycle = r["cycle"]["contenders"]
  handoff = r["handoff"]["contenders"]
  co = r["contention"]
  fmt = ->(x, d = 0) { x.nil? ? "–" : (d.zero? ? x.round.to_s : x.round(d).to_s) }
  puts "Run: `bundle exec ruby bench/mysql.rb` (#{r['mode']}, #{r['duration_seconds'].round} s, #{r['started_at']}) on " \
       "#{m['nproc']} cores (#{m['cpu']}), #{m['ruby'].split(' (').first}, mariadbd #{m['mariadb']} (private, loopback), " \
       "memcached #{m['memcached']}, activerecord #{m['activerecord']}, trilogy #{m['trilogy']}, " \
       "with_advisory_lock #{m['with_advisory_lock']}; load average #{m['loadavg_start'].split.first} at the start, " \
       "#{m['loadavg_end'].split.first} at the end."
  puts
  head = "| lock | cycle median µs | cycle p99 µs | handoff median µs | handoff p99 µs |"
  rule = "|---|---:|---:|---:|---:|"
  if co
    head += " #{co['procs']} processes, #{co['hold_ms']} ms held: acq/s | share min / max | wait p50 ms | wait p99 ms | statements/acq |"
    rule += "---:|---:|---:|---:|---:|"
  end
  puts head, rule
  cycle.each do |name, c|
    h = handoff[name] || {}
    line = "| #{c['label']} | #{fmt[c['median_us']]} | #{fmt[c['p99_us']]} | #{fmt[h['median_us']]} | #{fmt[h['p99_us']]} |"
    if co && (k = co["contenders"][name])
      req = k["requests_per_acquisition"].nil? ? "–" : "#{k['requests_per_acquisition']}#{k['server'] == 'memcached' ? ' (memcached)' : ''}"
      line += " #{fmt[k['throughput']]} | #{k['min_share']} / #{k['max_share']} | #{fmt[k['wait_p50_ms'], 2]} | " \
              "#{fmt[k['wait_p99_ms'], 1]} | #{req} |"
    end
    puts line
  end
  turns = handoff.map { |n, h| "#{cycle.dig(n, 'label') || n} #{h['turns']}" }.join(", ")
  puts
  puts "(Handoffs: #{r['handoff']['workers']} processes × #{r['handoff']['cycles_per_worker']} cycles; " \
       "turns to another process: #{turns}.)"
  r["ratios"].each do |x|
    puts
    puts "MegaMutex :mysql / with_advisory_lock, #{x['megamutex'].sub('mysql-', '')}: cycle #{fmt[x['cycle_median'], 2]}; " \
         "handoff #{fmt[x['handoff_median'], 2]} (the lock passed to another process in #{x['handoff_turns'][0]} against " \
         "#{x['handoff_turns'][1]} of #{x['handoff_cycles']} cycles)" +
         (co ? "; #{co['procs']} processes: throughput ×#{fmt[x['contention_throughput'], 2]}, wait p99 " \
               "#{fmt[x['contention_wait_p99'], 3]}, min share #{x['contention_min_share'].join(' against ')}" : "") + "."
  end
  r["notes"].each { |n| puts "", "Note: #{n}" }
end

if ARGV[0] == "--mysql"
  mysql_tables(ARGV[1] || File.expand_path("results/mysql.json", __dir__))
  exit
end

path = ARGV[0] || File.expand_path("results/latest.json", __dir__)
mysql_path = ARGV[1] || File.expand_path("results/mysql.json", __dir__)
r = JSON.parse(File.read(path))
m = r["machine"]
c = r["cycle"]["contenders"]

def us(x) = x.round.to_s
def pct(x) = "#{(x * 100).round} %"

puts "Run: `bundle exec rake bench` (#{r['mode']}, #{r['duration_seconds'].round} s, #{r['started_at']}) on " \
     "#{m['nproc']} cores (#{m['cpu']}), #{m['os']}, kernel #{m['kernel']}, #{m['ruby'].split(' (').first}, " \
     "memcached #{m['memcached']} (`#{m['memcached_flags']}`), libmemcached #{m['libmemcached']}, redis #{m['redis']}; " \
     "load average #{m['loadavg_start'].split.first} at the start, #{m['loadavg_end'].split.first} at the end."
puts
puts "| contender | median µs | mean µs | p99 µs | min µs | requests/cycle |"
puts "|---|---:|---:|---:|---:|---:|"
c.each_value do |v|
  req = v["server"] == "redis" ? "#{v['requests_per_cycle']} (redis)" : v["requests_per_cycle"].to_s
  puts "| #{v['label']} | #{us(v['median_us'])} | #{us(v['mean_us'])} | #{us(v['p99_us'])} | #{us(v['min_us'])} | #{req} |"
end
puts
puts "Hold 1 ms (serial ideal `1 / (hold + floor)`; *% real*: against the hold measured inside the block):"
puts
puts "| contender | P | acq/s | % ideal | % real | share min / max | wait p50 ms | wait p99 ms | wait max ms | req/acq |"
puts "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
runs = r["contention"]["runs"]
runs.select { |x| x["hold_ms"] == 1.0 }.each do |x|
  req = x["server"] == "redis" ? "#{x['requests_per_acquisition']} (redis)" : x["requests_per_acquisition"].to_s
  puts "| #{x['contender']} | #{x['procs']} | #{x['throughput'].round} | #{pct(x['efficiency'])} | " \
       "#{pct(x['efficiency_measured_hold'])} | #{x['min_share']} / #{x['max_share']} | #{x['wait_p50_ms'].round(2)} | " \
       "#{x['wait_p99_ms'].round(1)} | #{x['wait_max_ms'].round(1)} | #{req} |"
end
hold = runs.select { |x| x["hold_ms"] == 1.0 }.map { |x| x["hold_mean_ms"] }.compact
puts
puts "(`sleep(0.001)` took #{(hold.sum / hold.size).round(2)} ms on average inside the blocks.)" unless hold.empty?
zero = runs.select { |x| x["hold_ms"].zero? }
unless zero.empty?
  puts
  puts "Hold 0:"
  puts
  puts "| contender | P | acq/s | share min / max | wait p50 ms | wait p99 ms | req/acq |"
  puts "|---|---:|---:|---:|---:|---:|---:|"
  zero.each do |x|
    puts "| #{x['contender']} | #{x['procs']} | #{x['throughput'].round} | #{x['min_share']} / #{x['max_share']} | " \
         "#{x['wait_p50_ms'].round(2)} | #{x['wait_p99_ms'].round(1)} | #{x['requests_per_acquisition']} |"
  end
end
th = r["threads"]
if th
  puts
  puts "Threads: #{th['procs']} processes on one key, hold 1 ms, 1 thread each against #{th['threads']} threads each " \
       "(median of #{th['rounds']} rounds of #{th['seconds']} s):"
  puts
  puts "| processes × threads | acq/s | share min / max (processes) | thread share min | wait p50 ms | wait p99 ms | req/acq |"
  puts "|---|---:|---:|---:|---:|---:|---:|"
  th["runs"].each do |x|
    puts "| #{x['procs']} × #{x['threads']} | #{x['throughput'].round} | #{x['min_share']} / #{x['max_share']} | " \
         "#{x['thread_min_share']} | #{x['wait_p50_ms'].round(2)} | #{x['wait_p99_ms'].round(1)} | #{x['requests_per_acquisition']} |"
  end
  puts
  puts "Requests per acquisition, × #{th['threads']} threads / × 1: #{th['ratio']}."
end
s = r["scaling"]
puts
puts "Scaling, distinct keys, hold 0 (median of #{s['rounds']} rounds of #{s['seconds']} s):"
puts
puts "| P | acq/s total | per process | × P=1 |"
puts "|---:|---:|---:|---:|"
s["runs"].each { |x| puts "| #{x['procs']} | #{x['throughput'].round} | #{x['per_process'].round} | #{x['speedup'].round(2)} |" }
w = r["waiting"]
puts
puts "Waiting cost: a waiter on a lock held #{w['held_seconds']} s sent #{w['requests']} requests, " \
     "#{w['requests_per_second']}/s (ceiling over that window #{w['ceiling_requests_per_second']}/s; " \
     "steady state at most #{w['steady_ceiling_requests_per_second']}/s)."
puts
puts "| target | measured | limit | |"
puts "|---|---:|---:|---|"
r["targets"].each { |t| puts "| #{t['name']} | #{t['value']} | #{t['op']} #{t['target']} | #{t['pass'] ? 'PASS' : 'MISS'} |" }
if File.exist?(mysql_path)
  puts
  puts "MariaDB (`bundle exec ruby bench/mysql.rb`, the last part of `rake bench`):"
  puts
  mysql_tables(mysql_path)
end
