# frozen_string_literal: true

# The report of chaos/mysql.rb: the table of figures per scenario, the
# faults one by one, the verdict line (PASS/FAIL) and the --json output.
# Mixed into MysqlChaos::Driver (it reads @results, @opts, @failed_dirs,
# @version); the figures themselves are MysqlChaos::Driver#summarize's.
module MysqlChaos
  # See the file's comment.
  module Report
    private

    def report(total_wall)
      cols = SCENARIOS.filter_map { |n| @results[n] }
      row = ->(label, &f) { format("%-40s", label) + cols.map { |r| format(" %12s", f.call(r) || "-") }.join }
      only = ->(r, name, v) { r[:name] == name ? v : "-" }
      ms = ->(v) { v ? format("%.1f ms", v * 1000) : "-" }
      lines = ["", format("%-40s", "") + cols.map { |r| format(" %12s", r[:name]) }.join]
      lines << row.("sections completed (target)") { |r| "#{r[:completed]} (#{r[:target]})" }
      lines << row.("kills -9 (inside a section)") { |r| only.(r, "kill", "#{r[:kills]} (#{r[:kills_in_section]})") }
      lines << row.("kill -> next entry, median") { |r| only.(r, "kill", ms.(r[:kill_gap_median])) }
      lines << row.("kill -> next entry, max") { |r| only.(r, "kill", ms.(r[:kill_gap_max])) }
      lines << row.("holder pauses short / long") { |r| only.(r, "pause", "#{r[:short_pauses]} / #{r[:long_pauses]}") }
      lines << row.("long pause -> next entry by another") do |r|
        only.(r, "pause", r[:long_pause_free_min] && format("%.2f-%.2f s", r[:long_pause_free_min], r[:long_pause_free_max]))
      end
      lines << row.("long-paused holders told") { |r| only.(r, "pause", "#{r[:told_long_pause]} of #{r[:long_paused_holders]}") }
      lines << row.("waiters paused (entered late, told)") { |r| only.(r, "pause", "#{r[:waiter_pauses]} (#{r[:stale_waiters_told]})") }
      lines << row.("mariadbd kill -9 / clean shutdown") { |r| only.(r, "server", "#{r[:server_crashes]} / #{r[:shutdowns]}") }
      lines << row.("restart start -> next entry") do |r|
        only.(r, "server", r[:restart_free_min] && format("%.2f-%.2f s", r[:restart_free_min], r[:restart_free_max]))
      end
      lines << row.("holders under a restart told") { |r| only.(r, "server", "#{r[:told_restart]} of #{r[:restarted_holders]}") }
      lines << row.("sections after a restart (fewest)") { |r| only.(r, "server", r[:sections_after_restart]) }
      lines << row.("connection errors (acq/release)") { |r| "#{r[:conn]} (#{r[:conn_acquire]}/#{r[:conn_release]})" }
      lines << row.("lost-lock errors (LockLostError)") { |r| r[:lost] }
      lines << row.("server errors / lock timeouts") { |r| "#{r[:server_errors]} / #{r[:timeouts]}" }
      lines << row.("worker crashes") { |r| r[:crashes].size }
      lines << row.("OVERLAPS (overlapping pairs)") { |r| r[:violations] }
      lines << row.("  kill scenario") { |r| only.(r, "kill", r[:by][:kill]) }
      lines << row.("  short-pause windows") { |r| only.(r, "pause", r[:by][:short_pause]) }
      lines << row.("  long-pause windows (told/all)") { |r| only.(r, "pause", told_of(r, :long_pause)) }
      lines << row.("  waiter-pause windows (told/all)") { |r| only.(r, "pause", told_of(r, :waiter_pause)) }
      lines << row.("  restart windows (told/all)") { |r| only.(r, "server", told_of(r, :crash, :shutdown)) }
      lines << row.("  outside fault windows") { |r| r[:name] == "kill" ? "-" : r[:by][:outside] }
      lines << row.("longest run by one process") { |r| r[:streak] }
      lines << row.("wall time") { |r| format("%.1f s", r[:wall]) }
      faulted = cols.reject { |r| r[:faults].empty? }
      unless faulted.empty?
        lines << ""
        lines << "faults (t from the scenario's start; \"told\": what the holder inside its section got after its block):"
        faulted.each do |r|
          r[:faults].each do |f|
            what = f.seconds ? format("%s %.2f s", f.kind.to_s.tr("_", " "), f.seconds) : f.kind.to_s
            who = if f.kind != :waiter_pause then "holder #{f.sid}"
                  elsif f.inside then "waiter #{f.pid}, inside after all: #{f.sid}"
                  else "waiter #{f.pid}, its next section #{f.sid}"
                  end
            holder = f.targeted ? "#{who}, told: #{outcome_of(r, f)}" : "untargeted"
            lines << format("  %-7s #%d %-22s at %6.2f s  %s; %d section(s) after it", r[:name], f.n, what, f.start - r[:started],
                            holder, f.after.to_i)
          end
        end
      end
      problems = []
      cols.each do |r|
        problems << "#{r[:name]}: did not finish within #{@opts.max_seconds} s" if r[:timed_out]
        problems.concat(r[:crashes].map { |c| "#{r[:name]}: worker crashed: #{c}" })
        problems.concat(r[:problems].map { |v| "#{r[:name]}: #{v}" })
      end
      k = @results["kill"]
      problems << "kill scenario: no kill inside a section" if k && k[:kills_in_section].zero?
      lines << ""
      lines << format("total wall time %.1f s", total_wall)
      @failed_dirs.each { |d| lines << "logs kept in #{d}" }
      expected = cols.sum { |r| r[:by][:long_pause] + r[:by][:waiter_pause] + r[:by][:crash] + r[:by][:shutdown] }
      if problems.empty?
        note = expected.zero? ? "" : "; #{expected} overlap(s) after pauses beyond the lease and restarts, each with a told section (expected)"
        lines << "PASS: no overlap under kill -9 or short pauses, none outside fault windows, every holder that lost the lock told#{note}"
      else
        lines << "FAIL: #{problems.join('; ')}"
      end
      puts lines
      { pass: problems.empty?, problems: problems, total_wall: total_wall }
    end

    def told_of(result, *kinds)
      all = kinds.sum { |k| result[:by][k] }
      untold = kinds.sum { |k| result[:by][:"#{k}_untold"] }
      "#{all - untold}/#{all}"
    end

    def outcome_of(result, fault)
      result[:outcomes][fault.sid] || "?"
    end

    def json_server
      { mariadb: @version }
    end

    # A fault for the JSON, with what the holder it hit was told.
    def json_fault(result, fault)
      super.merge(told: fault.targeted ? outcome_of(result, fault) : nil)
    end
  end
end
