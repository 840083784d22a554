# frozen_string_literal: true

# Prints the README's benchmark tables (Markdown) from a results file, so the
# README shows exactly what one `rake bench` run measured:
#
#   ruby bench/readme_tables.rb [bench/results/latest.json]
require "json"

path = ARGV[0] || File.expand_path("results/latest.json", __dir__)
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
