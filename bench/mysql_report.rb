# frozen_string_literal: true

# The text report of bench/mysql.rb (bench/results/mysql.txt) from its
# results Hash (the same Hash mysql.json holds, with Symbol keys).
module Bench
  module MySQLBench
    class Report
      def initialize(results)
        @r = results
      end

      def text
        m = @r[:machine]
        lines = ["MegaMutex :mysql benchmark (#{@r[:mode]}), #{@r[:started_at]}, #{@r[:duration_seconds]} s",
                 "machine: #{m[:nproc]} cores, #{m[:cpu]}, kernel #{m[:kernel]}",
                 "         #{m[:ruby]}",
                 "         mariadbd #{m[:mariadb]} (private, loopback), memcached #{m[:memcached]} (-M)",
                 "         mega_mutex #{m[:mega_mutex]}, activerecord #{m[:activerecord] || '-'}, trilogy #{m[:trilogy] || '-'}, " \
                 "with_advisory_lock #{m[:with_advisory_lock] || '-'}",
                 "         load average (1/5/15 min) #{m[:loadavg_start]} at the start, #{m[:loadavg_end]} at the end",
                 "waiting: #{@r[:settings][:waiting]}"]
        @r[:notes].each { |n| lines << "NOTE: #{n}" }
        lines.concat(cycle_lines, handoff_lines, contention_lines, ratio_lines)
        lines.join("\n") + "\n"
      end

      private

      def num(value, fmt)
        value.nil? ? "-" : format(fmt, value)
      end

      def cycle_lines
        cy = @r[:cycle]
        lines = ["", "== 1. Uncontended cycle: µs per lock + empty block + unlock, one thread",
                 "   #{cy[:rounds]} rounds x #{cy[:cycles]} cycles per contender, order rotated each round; " \
                 "median = median of the round medians; req/cycle: statements (mariadb Questions) or memcached requests",
                 format("   %-32s %9s %9s %9s %10s  %s", "contender", "median", "p99", "min", "req/cycle", "round medians")]
        cy[:contenders].each_value do |c|
          rm = c[:round_medians_us]
          lines << format("   %-32s %9.1f %9.1f %9.1f %10.2f  %.0f..%.0f", c[:label], c[:median_us], c[:p99_us], c[:min_us],
                          c[:requests_per_cycle], rm.min, rm.max)
        end
        lines
      end

      def handoff_lines
        h = @r[:handoff]
        lines = ["", "== 2. Handoff: #{h[:workers]} processes x #{h[:cycles_per_worker]} cycles on one key (empty block), " \
                     "started together; µs from one holder leaving its block to the next, in another process, entering its block",
                 format("   %-32s %9s %9s %9s  %s", "contender", "median", "p99", "max", "turns to another process")]
        h[:contenders].each_value do |c|
          lines << format("   %-32s %9s %9s %9s  %d of %d cycles", c[:label], num(c[:median_us], "%.1f"), num(c[:p99_us], "%.1f"),
                          num(c[:max_us], "%.1f"), c[:turns], c[:cycles])
        end
        lines
      end

      def contention_lines
        co = @r[:contention]
        return ["", "== 3. Contention: not run (--procs 0)"] unless co

        lines = ["", "== 3. Contention: #{co[:procs]} processes on ONE key, each looping lock { sleep #{co[:hold_ms]} ms } " \
                     "for #{co[:seconds]} s, started together",
                 "   share = a process's acquisitions / (total / P); wait = from calling lock to entering the block; " \
                 "req/acq = statements (mariadb Questions) or memcached requests per acquisition",
                 format("   %-32s %8s %6s %6s %9s %9s %9s %8s", "contender", "acq/s", "minsh", "maxsh", "wait p50", "wait p99",
                        "wait max", "req/acq")]
        co[:contenders].each_value do |c|
          lines << format("   %-32s %8.0f %6.2f %6.2f %7sms %7sms %7sms %8s", c[:label], c[:throughput], c[:min_share],
                          c[:max_share], num(c[:wait_p50_ms], "%.2f"), num(c[:wait_p99_ms], "%.1f"), num(c[:wait_max_ms], "%.1f"),
                          num(c[:requests_per_acquisition], "%.2f"))
        end
        lines
      end

      def ratio_lines
        return ["", "== MegaMutex / with_advisory_lock: (with_advisory_lock not run)"] if @r[:ratios].empty?

        lines = ["", "== MegaMutex :mysql / with_advisory_lock, same transport, same server (times: below 1 = MegaMutex " \
                     "faster; throughput: above 1 = MegaMutex more)"]
        @r[:ratios].each do |x|
          turns = x[:handoff_turns]
          line = format("   %-13s / %-11s cycle %s; handoff %s (turns to another process: %d against %d of %d)",
                        x[:megamutex], x[:peer], num(x[:cycle_median], "%.2f"), num(x[:handoff_median], "%.2f"),
                        turns[0], turns[1], x[:handoff_cycles])
          if x[:contention_throughput]
            line += format("; P=%d: throughput %s, wait p99 %s (min share %.2f against %.2f)", @r[:contention][:procs],
                           num(x[:contention_throughput], "%.2f"), num(x[:contention_wait_p99], "%.3f"), *x[:contention_min_share])
          end
          lines << line
        end
        lines << "   (with_advisory_lock 5.3 never waits in GET_LOCK: a releasing process takes the lock straight back before " \
                 "a sleeping poller asks, so few cycles pass it on; its wait p50 is those re-takes, its p99 the pollers)"
        lines
      end
    end
  end
end
