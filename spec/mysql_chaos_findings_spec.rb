# frozen_string_literal: true

require "spec_helper"
require "timeout"

# What chaos/mysql.rb's "waiter pause" found, as the smallest case: a waiter
# blocked in GET_LOCK is stopped (SIGSTOP); the holder releases and the
# server grants the lock to the stopped waiter (the reply waits in its
# socket); the waiter's session, silent, is dropped after wait_timeout
# (lock_ttl + 2 s) and the lock goes to someone else. When the waiter
# resumes it reads a grant that is void. It used to enter its block while
# the other held the lock (and was told afterwards); a grant read later
# than the session's wait_timeout after GET_LOCK was sent is now checked on
# the session first (store_mariadb.c, take): the waiter waits on, and
# enters only once the other has released.
RSpec.describe "backend :mysql, a waiter stopped past the lease after its grant", :slow do
  include_context "backend :mysql on the suite's MariaDB", lock_ttl: 1

  let(:id) { "late-waiter" }

  after do
    Array(@children).each do |pid|
      Process.kill(:CONT, pid)
      Process.kill(:KILL, pid)
      Process.wait(pid)
    rescue Errno::ESRCH, Errno::ECHILD
      nil
    end
  end

  # A process that waits for `id`, says "entered" (and whether it knows the
  # lock lost) inside its block, stays until it is told or 2.5 s pass (more
  # than two refreshes of a lock_ttl 1 lock), then says what
  # with_distributed_mutex raised after the block.
  def waiter_process
    reader, writer = IO.pipe
    script = <<~RUBY
      $LOAD_PATH.unshift(#{File.join(SpecHelpers::ROOT, 'lib').inspect})
      require "mega_mutex"
      $stdout.sync = true
      MegaMutex.configure do |c|
        c.backend = :mysql
        c.mysql_url = #{db.url.inspect}
        c.namespace = #{@namespace.inspect}
        c.lock_ttl = 1
        c.on_lock_lost = :raise
      end
      begin
        MegaMutex.with_distributed_mutex(#{id.inspect}, timeout: 60) do |lock|
          puts "entered lost=\#{lock.lost?}"
          deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 2.5
          sleep 0.05 until lock.lost? || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
        end
        puts "not told"
      rescue MegaMutex::LockLostError
        puts "told"
      end
    RUBY
    pid = Process.spawn(RbConfig.ruby, "-e", script, out: writer, err: File::NULL, pgroup: true)
    writer.close
    (@children ||= []) << pid
    [pid, reader]
  end

  def stopped?(pid)
    states = Dir["/proc/#{pid}/task/*/stat"].map { |path| File.read(path)[/\) (\S)/, 1] }
    !states.empty? && states.all?("T")
  end

  it "does not enter on a grant its dropped session no longer has: it waits for the lock's next holder to release" do
    first = MegaMutex::Lock.new(id, timeout: 10)
    first.lock
    pid, reader = waiter_process
    wait_for(within: 30, message: "the waiter blocked in GET_LOCK") { waiting_sessions.size == 1 }
    Process.kill(:STOP, pid)
    wait_for(message: "the waiter stopped") { stopped?(pid) }

    expect(first.unlock).to be(true)
    probe = MegaMutex::Lock.new(id)
    wait_for(message: "the lock granted to the stopped waiter") { probe.locked? }
    wait_for(within: 30, message: "the stopped waiter's session dropped") { !probe.locked? }
    second = MegaMutex::Lock.new(id, timeout: 10)
    second.lock
    released = false
    begin
      Process.kill(:CONT, pid)
      # Back to waiting, in a new session, while `second` holds the lock.
      wait_for(within: 30, message: "the resumed waiter waiting again (or entering)") do
        waiting_sessions.size == 1 || IO.select([reader], nil, nil, 0)
      end
      entered = IO.select([reader], nil, nil, 0) && reader.gets
      expect(entered).to be_nil # it did not enter while `second` held the lock
      expect(second.unlock).to be(true)
      released = true
      expect(Timeout.timeout(30) { reader.gets }).to eq("entered lost=false\n")
      expect(Timeout.timeout(30) { reader.gets }).to eq("not told\n")
      expect(second.lost?).to be(false)
    ensure
      second.unlock unless released
    end
  end

  def waiting_sessions
    db.sessions.select { |_, _, info| info.include?("GET_LOCK") }
  end
end
