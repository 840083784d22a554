# frozen_string_literal: true

require "spec_helper"
require "timeout"

# backend :mysql with holders in other processes that die or stop: the
# session is the lease.
RSpec.describe "backend :mysql, holders in other processes" do
  include_context "backend :mysql on the suite's MariaDB", lock_ttl: 1

  # A child process that holds `id` until killed; returns its pid once it holds it.
  def holder_process(id)
    reader, writer = IO.pipe
    script = configured_script(backend: :mysql, mysql_url: db.url, lock_ttl: 1, on_lock_lost: :log) + <<~RUBY
      MegaMutex.with_distributed_mutex(#{id.inspect}) do |lock|
        $stdout.puts "held"
        $stdout.flush
        sleep 0.05 until lock.lost? || $stdin.closed?
        $stdout.puts(lock.lost? ? "lost" : "kept")
        $stdout.flush
        sleep
      end
    RUBY
    pid = Process.spawn(RbConfig.ruby, "-e", script, out: writer, err: File::NULL, pgroup: true)
    writer.close
    (@children ||= []) << pid
    line = Timeout.timeout(30) { reader.gets }
    raise "the holder did not take #{id}" unless line == "held\n"

    [pid, reader]
  end

  after do
    Array(@children).each do |pid|
      Process.kill(:CONT, pid)
      Process.kill(:KILL, pid)
      Process.wait(pid)
    rescue Errno::ESRCH, Errno::ECHILD
      nil
    end
  end

  it "frees the lock as soon as a holder is killed with kill -9 (no lease to wait for)" do
    pid, = holder_process("k9")
    expect(MegaMutex::Lock.new("k9").try_lock).to be(false)
    waiter = Thread.new { MegaMutex.with_distributed_mutex("k9", timeout: 60) { :ran } }
    wait_for(within: 30, message: "the waiter to block") do
      db.sessions.any? { |_, _, info| info.include?("GET_LOCK") }
    end
    Process.kill(:KILL, pid)
    Process.wait(pid)
    @children.delete(pid)
    expect(Timeout.timeout(30) { waiter.value }).to eq(:ran) # well before any lease could have run out
  end

  it "frees the lock of a holder stopped with SIGSTOP once its session is silent for lock_ttl + 2 s, and tells it when it resumes", :slow do
    pid, reader = holder_process("stop")
    Process.kill(:STOP, pid)
    taken = Timeout.timeout(60) { MegaMutex.with_distributed_mutex("stop", timeout: 60) { :ran } }
    expect(taken).to eq(:ran)
    Process.kill(:CONT, pid)
    expect(Timeout.timeout(30) { reader.gets }).to eq("lost\n")
  end
end
