# frozen_string_literal: true

require "spec_helper"
require "timeout"
require_relative "support/mysql_review_helpers"

# Session 6's hostile review of the :mysql store: the keeper (the pthread
# that pings holding sessions while Ruby threads keep the renewer from the
# GVL). It was one thread per process: a ping to a stopped server stalled
# it for io_timeout, and a session on another, healthy server fell silent
# past its wait_timeout and lost its lock while its holder, alive, believed
# it held it (another process could take it). Now one keeper per server.
RSpec.describe "backend :mysql: a stopped server's session never stalls the keeping of another server's", :slow do
  include MariaDBHelpers
  include MysqlReviewHelpers

  before { skip "mariadbd is not installed" unless Servers::MariaDB.available? }

  after do
    @child&.close
    if @stopped
      @stopped.resume
      @stopped.stop
    end
  end

  # A process holding a lock on each server (lock_ttl 1: wait_timeout 3 s;
  # io_timeout 6 s), that hogs the GVL for 4 s or more in one C call (sort!) when
  # told, then says whether its lock on the healthy server survived.
  def holder_process(healthy, stopped)
    script = review_script_prelude(healthy.url, lock_ttl: 1, io_timeout: 6) + <<~RUBY
      elsewhere = MySQLMutex.new("elsewhere", 0, false, #{stopped.url.inspect})
      elsewhere.lock or abort "no lock on the other server"
      kept = MegaMutex::Lock.new("kept", timeout: 0)
      kept.try_lock or abort "no lock"
      # One C call that keeps the GVL about 6 s: sized on this machine now.
      clock = -> { Process.clock_gettime(Process::CLOCK_MONOTONIC) }
      probe = Array.new(1_000_000) { |i| (i * 7919) % 1_000_003 }
      t = clock.call
      probe.sort!
      per = (clock.call - t) / 1_000_000
      n = [(7.0 / per).to_i, 40_000_000].min
      puts "held"
      $stdin.gets
      # Until one sort! has kept the GVL more than 4 s (a noisy machine may
      # make the sizing short): the lock must outlive that one.
      3.times do
        hog = Array.new(n) { |i| (i * 7919) % (n + 3) }
        t = clock.call
        hog.sort!
        @hogged = clock.call - t
        break if @hogged > 4

        n = [n * 2, 80_000_000].min
      end
      puts "hogged \#{@hogged.round(1)}"
      puts "lost=\#{kept.lost?} unlock=\#{kept.unlock}"
    RUBY
    IO.popen([RbConfig.ruby, "-e", script], "r+", err: File::NULL)
  end

  it "keeps the lock on the healthy server through a GVL hog longer than its wait_timeout" do
    healthy = Servers::MariaDB.shared
    @stopped = Servers::MariaDB.new.start
    @child = holder_process(healthy, @stopped)
    expect(Timeout.timeout(60) { @child.gets }).to eq("held\n")
    @stopped.pause # its session's next ping stalls for io_timeout (6 s)
    @child.puts
    hogged = Timeout.timeout(120) { @child.gets }
    expect(Float(hogged[/[\d.]+/])).to be > 3.5 # longer than the session's wait_timeout (lock_ttl 1 + 2 s)
    expect(Timeout.timeout(30) { @child.gets }).to eq("lost=false unlock=true\n")
  end
end
