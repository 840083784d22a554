# frozen_string_literal: true

# The demo (demo/widgets.rb, what bin/demo runs) as a user sees it: run as a
# subprocess with small numbers against the suite's memcached.
RSpec.describe "demo/widgets.rb" do
  # Runs the demo; returns [stdout, stderr, status]. A demo still running
  # after `timeout` seconds is stopped (it stops its workers on TERM).
  def run_demo(*args, timeout: 60)
    command = [RbConfig.ruby, "-I", File.join(SpecHelpers::ROOT, "lib"), File.join(SpecHelpers::ROOT, "demo", "widgets.rb"), *args]
    Open3.popen3(*command, chdir: SpecHelpers::ROOT) do |stdin, stdout, stderr, waiter|
      stdin.close
      out = Thread.new { stdout.read }
      err = Thread.new { stderr.read }
      unless waiter.join(timeout)
        Process.kill(:TERM, waiter.pid)
        waiter.join
        raise "demo did not finish within #{timeout}s:\n#{out.value}#{err.value}"
      end
      [out.value, err.value, waiter.value]
    end
  end

  # The row of the final table for a phase: [widgets, target, verdict,
  # acquisitions (an Integer, or "-" for none)].
  def row(output, phase)
    match = output.match(/^#{Regexp.escape(phase)}\s+(\d+)\s+(\d+)\s+(too many!|too few!|exactly enough|workers failed!)\s+(\d+|-)\s/)
    expect(match).not_to be_nil, "no table row for #{phase.inspect} in:\n#{output}"
    [Integer(match[1]), Integer(match[2]), match[3], match[4] == "-" ? "-" : Integer(match[4])]
  end

  it "makes exactly the target with MegaMutex, and exits 0" do
    out, err, status = run_demo("--workers", "4", "--rounds", "3", "--target", "5")

    expect(err).to eq("")
    expect(status.exitstatus).to eq(0)
    expect(out).to include("memcached at #{memcached.address}")
    expect(row(out, "with MegaMutex")).to eq([5, 5, "exactly enough", 12])
  end

  it "reports the unprotected phase's count, never below the target (overshooting is up to the race)" do
    out, _err, status = run_demo("--workers", "3", "--rounds", "2", "--target", "4")

    expect(status.exitstatus).to eq(0)
    widgets, target, verdict, acquisitions = row(out, "without the mutex")
    expect(widgets).to be >= 4
    expect(target).to eq(4)
    expect(verdict).to eq(widgets > 4 ? "too many!" : "exactly enough")
    expect(acquisitions).to eq("-") # no mutex, nothing acquired: not a count of 0
  end

  it "says how many workers, rounds and widgets in plain words, singular or plural" do
    out, _err, status = run_demo("--workers", "2", "--rounds", "1", "--target", "1")

    expect(status.exitstatus).to eq(0)
    expect(out).to start_with("2 workers, 1 round each, want 1 widget; the mutex lives in memcached at ")
  end

  it "prints plain progress lines when its output is not a terminal" do
    out, _err, status = run_demo("--workers", "2", "--rounds", "2", "--target", "2")

    expect(status.exitstatus).to eq(0)
    expect(out).not_to include("\r")
    expect(out).to match(%r{^with MegaMutex:\s+4/4 rounds done in \d+\.\d s$})
  end

  it "explains its options with --help" do
    out, err, status = run_demo("--help")

    expect(status.exitstatus).to eq(0)
    expect(err).to eq("")
    expect(out).to include("--workers N", "--rounds R", "--target T", "--servers LIST")
  end

  it "exits 2 on a bad option, saying why" do
    _out, err, status = run_demo("--workers", "0")

    expect(status.exitstatus).to eq(2)
    expect(err).to include("--workers 0 (must be at least 1)")
  end
end
