# frozen_string_literal: true

require "spec_helper"
require "timeout"
require "logger"
require "stringio"

# backend :mysql through the public API, against real mariadbd servers: the
# suite's (Servers::MariaDB.shared) and, for restarts and credentials, ones
# of the example's own.
RSpec.describe "backend :mysql" do
  include_context "backend :mysql on the suite's MariaDB"

  def lock_name(id)
    MegaMutex::Native::Client._mysql_lock_name(key_for(id))
  end

  # Sessions of the server blocked in GET_LOCK.
  def waiting_sessions(server = db)
    server.sessions.count { |_, _, info| info.include?("GET_LOCK") }
  end

  it "wakes a waiter blocked in the server as soon as the holder releases" do
    inside = Queue.new
    go = Queue.new
    holder = Thread.new { MegaMutex.with_distributed_mutex("w") { inside << 1; go.pop } }
    inside.pop
    waiter = Thread.new { MegaMutex.with_distributed_mutex("w", timeout: 30) { MegaMutex.get_current_lock("w") } }
    wait_for(within: 30, message: "the waiter to block in GET_LOCK") { waiting_sessions == 1 }
    go << :release
    holder.join
    expect(Timeout.timeout(10) { waiter.value }).to match(/:#{Process.pid}:/)
    expect(MegaMutex.get_current_lock("w")).to be_nil
  end

  [
    ["Thread#raise", ->(t) { t.raise(Interrupt) }],
    ["Thread#kill", ->(t) { t.kill }]
  ].each do |how, stop|
    it "ends a wait at #{how}, leaving nothing held or queued in the server" do
      inside = Queue.new
      go = Queue.new
      holder = Thread.new { MegaMutex.with_distributed_mutex("i") { inside << 1; go.pop } }
      inside.pop
      waiter = Thread.new do
        Thread.current.report_on_exception = false
        MegaMutex.with_distributed_mutex("i") { :ran }
      end
      wait_for(within: 30, message: "the waiter to block") { waiting_sessions == 1 }
      stop.call(waiter)
      begin
        waiter.join(30) # the holder keeps the lock all along: only the interrupt can end this wait
      rescue Interrupt
        nil # what the waiter ended with
      end
      expect(waiter).not_to be_alive
      expect(waiting_sessions).to eq(0)
      go << :release
      holder.join
      expect(MegaMutex.get_current_lock("i")).to be_nil
      expect(db.lock_holder(lock_name("i"))).to be_nil
    end
  end

  it "ends a wait at Timeout.timeout, and the lock stays free for the next taker" do
    held = Thread.new { MegaMutex::Lock.new("t").tap(&:lock) }.value
    expect { Timeout.timeout(0.2) { MegaMutex.with_distributed_mutex("t") { :ran } } }.to raise_error(Timeout::Error)
    expect(waiting_sessions).to eq(0)
    expect(held.unlock).to be(true)
    expect(MegaMutex.with_distributed_mutex("t", timeout: 0) { :ran }).to eq(:ran)
  end

  it "gives a deadlock's victim a DeadlockError naming the lock; it keeps the lock it held, and the other thread goes on" do
    a_holds = Queue.new
    b_holds = Queue.new
    a = Thread.new do
      MegaMutex.with_distributed_mutex("d1") do
        a_holds << 1
        b_holds.pop
        MegaMutex.with_distributed_mutex("d2", timeout: 30) { :a_got_both }
      end
    end
    b = Thread.new do
      Thread.current.report_on_exception = false
      MegaMutex.with_distributed_mutex("d2") do
        b_holds << 1
        a_holds.pop
        wait_for(within: 30, message: "a to wait for d2") { waiting_sessions == 1 }
        begin
          MegaMutex.with_distributed_mutex("d1", timeout: 30) { :b_got_both }
        rescue MegaMutex::DeadlockError => e
          [e.class, e.id, e.message, MegaMutex.get_current_lock("d2")&.split(":")&.[](1)]
        end
      end
    end
    klass, id, message, d2_holder_pid = Timeout.timeout(20) { b.value }
    expect(klass).to eq(MegaMutex::DeadlockError)
    expect(id).to eq("d1")
    expect(message).to include(key_for("d1"))
    expect(d2_holder_pid).to eq(Process.pid.to_s) # still b's while it handled the error
    expect(Timeout.timeout(20) { a.value }).to eq(:a_got_both)
    expect(MegaMutex::DeadlockError.ancestors).to include(MegaMutex::ServerError)
  end

  it "reports the lock lost when its session is killed (lost?, the log, LockLostError)" do
    log = StringIO.new
    use_mariadb(db, lock_ttl: 3, logger: Logger.new(log))
    expect do
      MegaMutex.with_distributed_mutex("k") do |lock|
        db.sql("KILL CONNECTION #{db.lock_holder(lock_name('k'))}")
        wait_for(within: 10, message: "the loss to be seen") { lock.lost? }
      end
    end.to raise_error(MegaMutex::LockLostError, /session/)
    expect(log.string).to include("lost lock #{key_for('k')}")
    expect(MegaMutex.with_distributed_mutex("k", timeout: 0) { :again }).to eq(:again)
  end

  it "reports the lock lost when the server restarts, and takes locks again afterwards" do
    server = Servers::MariaDB.new.start
    use_mariadb(server, lock_ttl: 3)
    begin
      expect do
        MegaMutex.with_distributed_mutex("r") do |lock|
          server.restart
          wait_for(within: 10, message: "the loss to be seen") { lock.lost? }
        end
      end.to raise_error(MegaMutex::LockLostError)
      expect(MegaMutex.with_distributed_mutex("r", timeout: 0) { :after_restart }).to eq(:after_restart)
    ensure
      MegaMutex.reset_configuration!
      server.stop
    end
  end

  it "keeps a held lock while 16 CPU-bound threads hog the GVL (lock_ttl 1, held 10 s): the keeper needs no GVL", :slow do
    use_mariadb(db, lock_ttl: 1, on_lock_lost: :log)
    stop = false
    hogs = Array.new(16) { Thread.new { x = 0; x += 1 until stop } }
    begin
      lost, holder = MegaMutex.with_distributed_mutex("hog") do |lock|
        deadline = monotonic + 10
        nil while monotonic < deadline # this thread hogs it too
        [lock.lost?, db.lock_holder(lock_name("hog"))]
      end
    ensure
      stop = true
      hogs.each(&:join)
    end
    expect(lost).to be(false)
    expect(holder).not_to be_nil
  end

  it "never lends a session that holds a lock to another thread (MariaDB would grant it again)" do
    lock = MegaMutex::Lock.new("p")
    lock.lock
    10.times { expect(Thread.new { MegaMutex::Lock.new("p").try_lock }.value).to be(false) }
    expect(Thread.new { MegaMutex.with_distributed_mutex("p", timeout: 0) { :ran } rescue $! }.value)
      .to be_a(MegaMutex::TimeoutError)
    expect(lock.unlock).to be(true)
    expect(Thread.new { MegaMutex::Lock.new("p").tap(&:try_lock).unlock }.value).to be(true)
  end

  it "gives a session back to the pool after the release, and uses one session for a thread's nested locks" do
    ids = MegaMutex.with_distributed_mutex("n1") do
      MegaMutex.with_distributed_mutex("n2") do
        [db.lock_holder(lock_name("n1")), db.lock_holder(lock_name("n2"))]
      end
    end
    expect(ids.uniq.size).to eq(1)
    again = MegaMutex.with_distributed_mutex("n3") { db.lock_holder(lock_name("n3")) }
    expect(again).to eq(ids.first) # the same session, from the pool
  end

  it "lets a forked child take and release locks without ending its parent's session" do
    MegaMutex.with_distributed_mutex("f") do
      parent_session = db.lock_holder(lock_name("f"))
      pid = fork do
        code = begin
          MegaMutex.with_distributed_mutex("f-child", timeout: 5) { :ok } == :ok && MegaMutex::Lock.new("f").try_lock == false ? 0 : 1
        rescue Exception # rubocop:disable Lint/RescueException -- reported through the exit code
          2
        end
        exit!(code)
      end
      _, status = Process.wait2(pid)
      expect(status.exitstatus).to eq(0)
      expect(db.lock_holder(lock_name("f"))).to eq(parent_session)
    end
  end

  it "keeps ids apart that differ in case, length or trailing spaces" do
    ids = ["Report", "report", "report ", "report  ", "x" * 300, "#{'x' * 300}y"]
    holders = ids.map { |id| Thread.new { MegaMutex::Lock.new(id).tap(&:lock) }.value }
    ids.each { |id| expect(Thread.new { MegaMutex::Lock.new(id).try_lock }.value).to be(false), id[0, 10].inspect }
    expect(ids.map { |id| lock_name(id).bytesize }.max).to be <= 64
    holders.each { |h| expect(h.unlock).to be(true) }
    ids.each { |id| expect(MegaMutex.with_distributed_mutex(id, timeout: 0) { :ran }).to eq(:ran) }
  end

  it "raises ConnectionError naming the server when nothing listens there" do
    port = Servers.free_port
    MegaMutex.configure do |c|
      c.backend = :mysql
      c.mysql_url = "mysql://root:hunter2@127.0.0.1:#{port}"
      c.connect_timeout = 0.5
    end
    expect { MegaMutex.with_distributed_mutex("c") { :ran } }
      .to raise_error(MegaMutex::ConnectionError, /127\.0\.0\.1:#{port}/) { |e| expect(e.message).not_to include("hunter2") }
  end

  it "raises ConnectionError within connect_timeout for a host that does not answer" do
    MegaMutex.configure do |c|
      c.backend = :mysql
      c.mysql_url = "mysql://root@10.255.255.1:3306"
      c.connect_timeout = 0.3
    end
    # Without connect_timeout the kernel would try for minutes: the guard only catches that hang.
    Timeout.timeout(30) do
      expect { MegaMutex.with_distributed_mutex("c") { :ran } }.to raise_error(MegaMutex::ConnectionError, /10\.255\.255\.1.*connect_timeout/)
    end
  end

  it "raises ConnectionError for a wrong password, naming the server and not the password", :slow do
    server = Servers::MariaDB.new(grant_tables: true).start
    begin
      server.add_user("locks", "right-password")
      MegaMutex.configure do |c|
        c.backend = :mysql
        c.mysql_url = "mysql://locks:wrong-password@127.0.0.1:#{server.port}"
      end
      expect { MegaMutex.with_distributed_mutex("c") { :ran } }
        .to raise_error(MegaMutex::ConnectionError, /127\.0\.0\.1:#{server.port}.*Access denied/) { |e| expect(e.message).not_to include("wrong-password") }
      MegaMutex.configure do |c|
        c.backend = :mysql
        c.mysql_url = "mysql://locks:right-password@127.0.0.1:#{server.port}"
      end
      expect(MegaMutex.with_distributed_mutex("c") { :ran }).to eq(:ran)
    ensure
      MegaMutex.reset_configuration!
      server.stop
    end
  end
end
