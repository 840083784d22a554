# frozen_string_literal: true

require "spec_helper"
require_relative "support/chaos_runner"

# chaos/mysql.rb (backend :mysql) in its quick form, run as a subprocess that
# starts its own mariadbd: holders killed with kill -9, holders stopped
# (SIGSTOP) shorter and longer than the lease, a waiter stopped longer than
# the lease, mariadbd killed and shut down
# and started again. Assertions are on counts and verdicts, never on timings
# (the figures are the script's report).
chaos_mysql_skip =
  if ENV["MEGA_MUTEX_UNDER_VALGRIND"]
    "under valgrind: the run's work is done in subprocesses valgrind does not follow"
  elsif !Servers::MariaDB.available?
    "mariadbd (and the mariadb client) are not installed: apt-get install mariadb-server mariadb-client"
  end

RSpec.describe "chaos/mysql.rb (the :mysql backend)", skip: chaos_mysql_skip do
  include ChaosRunner

  def run_mysql_chaos(*args, timeout: 150)
    run_chaos_script("mysql.rb", *args, timeout: timeout)
  end

  it "kill -9 of holders, holders paused shorter and longer than the lease, mariadbd killed and shut down: " \
     "no overlap where none may be, every holder that lost the lock told, locking goes on" do
    out, status, result = run_mysql_chaos("--quick")

    expect(status.exitstatus).to eq(0), out
    expect(out).to match(/^PASS: no overlap under kill -9 or short pauses/)
    expect(result["pass"]).to be(true), out
    kill, pause, server = result["scenarios"].values_at("kill", "pause", "server")
    [kill, pause, server].each do |r|
      expect(r["crashes"]).to eq([]), out
      expect(r["timed_out"]).to be(false), out
      expect(r["by"].fetch("outside", 0)).to eq(0), out
    end

    expect(kill["kills"]).to be > 0
    expect(kill["kills_in_section"]).to be > 0
    expect(kill["violations"]).to eq(0), out
    expect(kill["completed"]).to be >= kill["target"]

    expect(pause["short_pauses"]).to eq(1)
    expect(pause["long_pauses"]).to eq(1)
    expect(pause["by"].fetch("short_pause", 0)).to eq(0), out
    expect(pause["long_paused_holders"]).to eq(1), out
    expect(pause["told_long_pause"]).to eq(pause["long_paused_holders"]), out
    expect(pause["by"].fetch("long_pause_untold", 0)).to eq(0), out
    # A waiter stopped beyond the lease may be granted while stopped and
    # enter late (its session dropped meanwhile): it must be told too.
    expect(pause["waiter_pauses"]).to eq(1)
    expect(pause["by"].fetch("waiter_pause_untold", 0)).to eq(0), out

    expect(server["server_crashes"]).to eq(1)
    expect(server["shutdowns"]).to eq(1)
    expect(server["told_restart"]).to eq(server["restarted_holders"]), out
    expect(server["by"].fetch("crash_untold", 0) + server["by"].fetch("shutdown_untold", 0)).to eq(0), out
    expect(server["sections_after_restart"]).to be > 0
    # Every overlap is in the window of a pause beyond the lease or of a
    # restart, and one of its two sections (the one whose lock was gone) told.
    (pause["overlaps"] + server["overlaps"]).each do |o|
      expect(o["window"]).to match(/\A(long_pause|waiter_pause|crash|shutdown)#/), o.inspect
      expect([o["a_outcome"], o["b_outcome"]]).to include("LockLostError"), o.inspect
    end
  end

  it "finds the overlaps when the sections run without the mutex (--no-lock), and exits 1" do
    out, status, result = run_mysql_chaos("--no-lock", "--scenario", "kill", "--procs", "3", "--sections", "5",
                                          "--min-kills", "1")

    expect(status.exitstatus).to eq(1), out
    expect(Integer(out[/^OVERLAPS \(overlapping pairs\)\s+(\d+)/, 1])).to be > 0
    expect(out).to match(/^FAIL: kill: \d+ overlap\(s\) under kill -9/)
    expect(result["pass"]).to be(false)
  end
end
