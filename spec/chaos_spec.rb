# frozen_string_literal: true

# The chaos suite (chaos/run.rb) in a short form, run as a subprocess that
# starts its own memcached: lock holders killed with kill -9, and a memcached
# pause shorter than the lease, must never let two processes into the section
# at once. (Overlaps around a restart are expected - the lock is lost - and
# only reported.) Assertions are on counts and verdicts, never on timings.
require_relative "support/chaos_runner"

RSpec.describe "chaos/run.rb" do
  include ChaosRunner

  def run_chaos(*args, timeout: 120)
    run_chaos_script("run.rb", *args, timeout: timeout)
  end

  it "kill -9 of holders (mostly inside their section): no violation, every section completed" do
    out, status, result = run_chaos("--quick", "--scenario", "kill")

    expect(status.exitstatus).to eq(0), out
    expect(out).to match(/^PASS: no violation under kill -9/)
    expect(out).to match(/^  kill scenario\s+0$/)
    kill = result.dig("scenarios", "kill")
    expect(kill["kills"]).to be > 0
    expect(kill["kills_in_section"]).to be > 0
    expect(kill["respawns"]).to eq(kill["kills"])
    expect(kill["completed"]).to be >= kill["target"]
    expect(kill["violations"]).to eq(0)
    expect(kill["crashes"]).to eq([])
  end

  # lock_ttl 2 and a 0.3 s pause that hits a holder inside its section: its
  # first renewal comes after the pause. (memcached's clock can lag and then
  # jump after a pause; the lease is sent as lock_ttl + 2 for that reason.)
  it "a memcached restart and a short pause: no violation in the pause's window or outside fault windows" do
    out, status, result = run_chaos("--quick", "--scenario", "server", "--ttl", "2", "--io-timeout", "0.2",
                                    "--long-pauses", "0", "--short-pause-seconds", "0.3")

    expect(status.exitstatus).to eq(0), out
    expect(out).to match(/^PASS: no violation under kill -9 or short pauses, none outside fault windows/)
    expect(out).to match(/^  short-pause windows\s+0$/)
    server = result.dig("scenarios", "server")
    expect(server["restarts"]).to eq(1)
    expect(server["short_pauses"]).to eq(1)
    expect(server["completed"]).to be >= server["target"]
    expect(server["by"]["short_pause"]).to eq(0)
    expect(server["by"]["outside"]).to eq(0)
    expect(server["crashes"]).to eq([])
    # A restart loses the lock; whoever held it across the restart is told.
    server["overlaps"].each do |o|
      expect(o["window"]).to start_with("restart#")
      expect(o["a_outcome"]).to eq("LockLostError"), "overlap #{o.inspect}"
    end
  end

  it "finds the overlaps when the sections run without the mutex (--no-lock), and exits 1" do
    out, status, result = run_chaos("--no-lock", "--scenario", "kill", "--procs", "3", "--sections", "5", "--min-kills", "1")

    expect(status.exitstatus).to eq(1), out
    expect(Integer(out[/^VIOLATIONS \(overlapping pairs\)\s+(\d+)/, 1])).to be > 0
    expect(out).to match(/^FAIL: \d+ violation\(s\) under kill -9/)
    expect(result["pass"]).to be(false)
  end

  describe "chaos/quorum.rb (the :quorum backend)" do
    def run_quorum_chaos(*args, timeout: 150)
      run_chaos_script("quorum.rb", *args, timeout: timeout)
    end

    it "a server killed and restarted empty, flushed, paused shorter and longer than the lease: " \
       "0 overlapping sections, tokens strictly increasing, locking goes on" do
      out, status, result = run_quorum_chaos("--quick")

      expect(status.exitstatus).to eq(0), out
      expect(out).to match(/^OVERLAPPING SECTIONS\s+0$/)
      expect(out).to match(/^TOKENS NOT INCREASING \(in section order\)\s+0$/)
      expect(result["faults"]).to eq("restart" => 1, "flush" => 1, "short_pause" => 1, "long_pause" => 1)
      expect(result["sections_during_faults"]).to be > 0
      expect(result["crashes"]).to eq([])
    end

    it "finds the overlaps when the sections run without the mutex (--no-lock), and exits 1" do
      out, status, result = run_quorum_chaos("--no-lock", "--rounds", "0", "--procs", "3")

      expect(status.exitstatus).to eq(1), out
      expect(result["overlaps"]).to be > 0
      expect(out).to match(/^FAIL/)
    end
  end
end
