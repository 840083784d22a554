# frozen_string_literal: true

require "spec_helper"
require "mega_mutex/distributed_mutex"
require "active_record"
require "logger"
require "stringio"
require "timeout"
require_relative "support/interrupt_points"

# The distributed_mutex drop-in (lib/mega_mutex/distributed_mutex.rb) on a real MariaDB.
RSpec.describe "require 'mega_mutex/distributed_mutex'" do
  include_context "backend :mysql on the suite's MariaDB"

  # The name MariaDB knows a MySQLMutex's lock by.
  def name_of(mutex)
    MegaMutex::Native::Client._mysql_lock_name(MegaMutex::Key.for(MegaMutex.configuration.namespace, mutex.key))
  end

  # [HOST, DB] of the session `id`, as the server lists it.
  def session_of(id)
    db.sql("SELECT HOST, COALESCE(DB, '') FROM information_schema.PROCESSLIST WHERE ID = #{Integer(id)}").first
  end

  # A thread whose exception is for #value, not for the log.
  def quiet_thread(&block)
    Thread.new do
      Thread.current.report_on_exception = false
      block.call
    end
  end

  it "defines the original classes with their defaults and messages" do
    expect(DistributedMutex.ancestors).to include(Mutex)
    expect(MySQLMutex.superclass).to eq(DistributedMutex)
    expect(DistributedMutex::DEFAULT_TIMEOUT).to eq(1)
    expect(DistributedMutex::DEFAULT_EXCEPTION_ON_TIMEOUT).to be(false)
    expect(MutexLockTimeout.new.message).to eq("Mutex lock operation timed out")
    expect(MutexLockReleaseFailure.new.message).to eq("Failed to release Mutex lock. This should be regarded as a system bug.")
    m = MySQLMutex.new("k")
    expect([m.key, m.timeout, m.exception_on_timeout, m.locked?]).to eq(["k", 1, false, false])
  end

  it "locks, excludes others, and unlocks with the original's return values" do
    mine = MySQLMutex.new("job")
    expect(mine.lock).to be(true)
    expect(mine.locked?).to be(true)
    other = Thread.new { MySQLMutex.new("job", 0.2).then { |m| [m.lock, m.locked?] } }.value
    expect(other).to eq([false, false])
    expect { quiet_thread { MySQLMutex.new("job", 0, true).lock }.value }.to raise_error(MutexLockTimeout, "Mutex lock operation timed out")
    expect(MySQLMutex.active_locks).to eq(Thread.current => { "job" => 1 })
    expect(mine.unlock).to be(true)
    expect(mine.unlock).to be(false)
    expect(mine.locked?).to be(false)
    expect(MySQLMutex.active_locks).to eq({})
  end

  it "synchronize returns true when the block ran and false when the lock was busy; the class form raises by default, as the original" do
    ran = []
    expect(MySQLMutex.new("s").synchronize { ran << 1 }).to be(true)
    expect(MySQLMutex.synchronize("s", 1) { ran << 2 }).to be(true)
    held = MySQLMutex.new("s")
    held.lock
    expect(Thread.new { MySQLMutex.new("s", 0.1).synchronize { ran << 3 } }.value).to be(false)
    expect(Thread.new { MySQLMutex.synchronize("s", 0.1, false) { ran << 4 } }.value).to be(false)
    # The original's MySQLMutex.synchronize defaults exception_on_timeout to DEFAULT_TIMEOUT (1): true.
    expect { quiet_thread { MySQLMutex.synchronize("s", 0.1) { ran << 5 } }.value }.to raise_error(MutexLockTimeout)
    expect { quiet_thread { MySQLMutex.synchronize("s", 0.1, true) { ran << 6 } }.value }.to raise_error(MutexLockTimeout)
    held.unlock
    expect(ran).to eq([1, 2])
  end

  it "try_lock says whether the lock could be taken and gives it back (as the original)" do
    expect(MySQLMutex.new("t").try_lock).to be(true)
    expect(MegaMutex.get_current_lock("t")).to be_nil
    held = MySQLMutex.new("t")
    held.lock
    expect(Thread.new { MySQLMutex.new("t", 0).try_lock }.value).to be(false)
    held.unlock
  end

  it "takes a connection as a Hash (String or Symbol keys) or a URL, each its own sessions on that server" do
    hash = { "host" => "127.0.0.1", "port" => db.port, "username" => "root" }
    [hash, hash.transform_keys(&:to_sym), db.url, { socket: db.socket_path, username: "root", adapter: "mysql2" }].each do |conn|
      m = MySQLMutex.new("c", 1, false, conn)
      expect(m.lock).to be(true)
      expect(Thread.new { MySQLMutex.new("c", 0).lock }.value).to be(false) # the same server and name
      expect(m.unlock).to be(true)
    end
    expect { MySQLMutex.new("c", 1, false, 42) }.to raise_error(ArgumentError, /connection must be/)
    expect { MySQLMutex.new("c", 1, false, { adapter: "postgresql", host: "db" }) }.to raise_error(ArgumentError, /"postgresql" is not MySQL/)
  end

  it "closes the sessions it opened for a connection once MegaMutex is configured again (no session left behind per configure)" do
    settings = { "host" => "127.0.0.1", "port" => db.port, "username" => "root" }
    cycle = -> { MySQLMutex.new("cfg", 1, false, settings).then { |m| [m.lock, m.unlock] } }
    expect(cycle.call).to eq([true, true])
    sessions = db.sessions.size # the pool keeps its idle session
    3.times do |i|
      MegaMutex.configure { |c| c.lock_ttl = 20 + i }
      expect(cycle.call).to eq([true, true])
    end
    wait_for(within: 10, message: "the old pools' sessions to close") { db.sessions.size == sessions }
  end

  it "refuses a key this thread holds through another server's settings (adopting it would not lock that server)" do
    other = Servers::MariaDB.new.start
    begin
      here = MySQLMutex.new("same-key")
      expect(here.lock).to be(true)
      expect { MySQLMutex.new("same-key", 1, false, other.url).lock }.to raise_error(MegaMutex::Error, /another MySQL server/)
      expect(here.unlock).to be(true)
      there = MySQLMutex.new("same-key", 1, false, other.url)
      expect(there.lock).to be(true)
      expect(other.lock_holder(MegaMutex::Native::Client._mysql_lock_name(there.instance_variable_get(:@lock).key))).not_to be_nil
      expect(there.unlock).to be(true)
    ensure
      other.stop
    end
  end

  it "lets a subclass that defines get_lock and release_lock use the frame" do
    klass = Class.new(DistributedMutex) do
      attr_reader :calls

      private

      def get_lock
        (@calls ||= []) << :get
        true
      end

      def release_lock
        @calls << :release
        true
      end
    end
    m = klass.new("x")
    expect(m.synchronize { :ran }).to be(true)
    expect(m.calls).to eq(%i[get release])
    expect(m.excluse_unlock).to be(false)
    expect { DistributedMutex.new("x").lock }.to raise_error(RuntimeError, "Method not implemented")
  end

  describe "with ActiveRecord over trilogy (a real ActiveRecord::Base connection)" do
    let(:database) { "mm_drop_in" }

    before do
      db.sql("CREATE DATABASE IF NOT EXISTS #{database}")
    end

    after do
      ActiveRecord::Base.remove_connection
    end

    # Connects ActiveRecord::Base; returns its connection and that connection's id.
    def connect(**settings)
      ActiveRecord::Base.establish_connection(adapter: "trilogy", username: "root", database: database, **settings)
      connection = ActiveRecord::Base.connection
      [connection, Integer(connection.select_value("SELECT CONNECTION_ID()"))]
    end

    # Locks `key` through MySQLMutex with `connection`, checks from the AR
    # connection that another session holds it, and returns [holder, session].
    def lock_through(ar, ar_id, key, connection)
      m = MySQLMutex.new(key, 1, false, connection)
      expect(m.lock).to be(true)
      holder = ar.select_value("SELECT IS_USED_LOCK(#{ar.quote(name_of(m))})")
      expect(holder).not_to be_nil
      expect(Integer(holder)).not_to eq(ar_id) # never the application's connection
      expect(Integer(ar.select_value("SELECT CONNECTION_ID()"))).to eq(ar_id)
      session = session_of(holder)
      expect(m.unlock).to be(true)
      expect(ar.select_value("SELECT IS_USED_LOCK(#{ar.quote(name_of(m))})")).to be_nil
      [Integer(holder), session]
    end

    it "locks on a session of its own opened with the connection's settings, never on the connection itself" do
      ar, ar_id = connect(host: "127.0.0.1", port: db.port)
      _, (_, dbname) = lock_through(ar, ar_id, "ar-tcp", ActiveRecord::Base.connection)
      expect(dbname).to eq(database) # the connection's database: its settings, not MegaMutex's URL
    end

    it "follows the connection to its unix socket (trilogy: the socket wins over a host)" do
      ar, ar_id = connect(socket: db.socket_path, host: "127.0.0.1", port: 1) # port 1: nothing listens there
      _, (_, dbname) = lock_through(ar, ar_id, "ar-socket", ar)
      expect(dbname).to eq(database)
    end

    it "without a connection, takes ActiveRecord::Base's database when MegaMutex's backend is not :mysql (the original's default)" do
      MegaMutex.configure { |c| c.backend = :memcached }
      ar, ar_id = connect(host: "127.0.0.1", port: db.port)
      m = MySQLMutex.new("ar-default")
      expect(m.lock).to be(true)
      holder = Integer(ar.select_value("SELECT IS_USED_LOCK(#{ar.quote(name_of(m))})"))
      expect(holder).not_to eq(ar_id)
      expect(session_of(holder).last).to eq(database)
      expect(memcached.get(MegaMutex::Key.for(@namespace, "ar-default"))).to be_nil # not memcached
      expect(m.unlock).to be(true)

      ActiveRecord::Base.remove_connection
      expect { MySQLMutex.new("ar-default") }.to raise_error(ArgumentError, /MySQLMutex needs a MySQL server/)
    end

    it "takes the connection's username and password (a server with accounts)", :slow do
      server = Servers::MariaDB.new(grant_tables: true).start
      begin
        server.add_user("app", "s3cret")
        server.sql("CREATE DATABASE appdb; GRANT ALL ON appdb.* TO 'app'@'%'; GRANT ALL ON appdb.* TO 'app'@'localhost'")
        ActiveRecord::Base.establish_connection(adapter: "trilogy", host: "127.0.0.1", port: server.port,
                                                username: "app", password: "s3cret", database: "appdb")
        ar = ActiveRecord::Base.connection
        ar_id = Integer(ar.select_value("SELECT CONNECTION_ID()"))
        m = MySQLMutex.new("creds", 1, false, ar)
        expect(m.lock).to be(true)
        holder = Integer(ar.select_value("SELECT IS_USED_LOCK(#{ar.quote(name_of(m))})"))
        expect(holder).not_to eq(ar_id)
        expect(server.sql("SELECT USER, DB FROM information_schema.PROCESSLIST WHERE ID = #{holder}")).to eq([%w[app appdb]])
        expect(m.unlock).to be(true)
        # The same settings with another password are refused by the server: the password is the connection's.
        wrong = MySQLMutex.new("creds", 1, false, ActiveRecord::Base.connection_db_config.configuration_hash.merge(password: "wrong"))
        expect { wrong.lock }.to raise_error(MegaMutex::ConnectionError, /Access denied/)
      ensure
        ActiveRecord::Base.remove_connection
        server.stop
      end
    end

    it "reads a url (DATABASE_URL style) as ActiveRecord does" do
      ar, ar_id = connect(host: "127.0.0.1", port: db.port)
      url = "trilogy://root@127.0.0.1:#{db.port}/#{database}?encoding=utf8mb4&pool=5"
      _, (_, dbname) = lock_through(ar, ar_id, "ar-url", { "url" => url })
      expect(dbname).to eq(database)
    end
  end

  describe "database.yml-style Hashes, read as their adapter reads them" do
    # Locks through `connection`; true once the lock was seen in the suite's server.
    def locks_there(connection)
      m = MySQLMutex.new("yml", 1, false, connection)
      expect(m.lock).to be(true)
      seen = !db.lock_holder(name_of(m)).nil?
      expect(m.unlock).to be(true)
      seen
    end

    # Nothing listens on port 1, and no socket is at /nonexistent: a
    # connection that went there would fail, so a lock taken proves the way.
    it "mysql2: a host other than localhost is TCP and the socket is ignored; localhost is the socket" do
      expect(locks_there({ "adapter" => "mysql2", "host" => "127.0.0.1", "port" => db.port, "socket" => "/nonexistent/mysqld.sock",
                           "username" => "root", "encoding" => "utf8mb4", "pool" => 5 })).to be(true)
      expect(locks_there({ adapter: "mysql2", host: "localhost", port: 1, socket: db.socket_path, username: "root" })).to be(true)
    end

    it "trilogy: a socket wins over a host; a host, even localhost, is TCP; neither is /tmp/mysql.sock" do
      expect(locks_there({ "adapter" => "trilogy", "host" => "127.0.0.1", "port" => 1, "socket" => db.socket_path, "username" => "root" }))
        .to be(true)
      expect(locks_there({ "adapter" => "trilogy", "host" => "localhost", "port" => db.port, "username" => "root" })).to be(true)
      expect(MegaMutex::ActiveRecordDatabase.settings({ "adapter" => "trilogy", "username" => "u" }))
        .to eq(username: "u", socket: "/tmp/mysql.sock") # trilogy's default
    end
  end

  describe "what differs from the original (each point of the list at the top of distributed_mutex.rb)" do
    it "1. its sessions are its own: another thread given the same settings is excluded, and nothing runs on the application's connection" do
      settings = { "host" => "127.0.0.1", "port" => db.port, "username" => "root" }
      mine = MySQLMutex.new("shared-conn", 1, false, settings)
      expect(mine.lock).to be(true)
      # The original counted by connection id: a second thread given the same connection "held" the key too.
      expect(Thread.new { MySQLMutex.new("shared-conn", 0.1, false, settings).lock }.value).to be(false)
      expect(mine.unlock).to be(true)
    end

    it "2. names the lock mm=namespace:key, not the bare key, and takes keys of any length" do
      m = MySQLMutex.new("report")
      m.lock
      expect(db.lock_holder("report")).to be_nil
      expect(db.lock_holder("mm=#{@namespace}:report")).not_to be_nil
      m.unlock
      long = MySQLMutex.new("k" * 300)
      expect(long.lock).to be(true)
      expect(name_of(long).bytesize).to be <= 64
      expect(db.lock_holder(name_of(long))).not_to be_nil
      expect(long.unlock).to be(true)
    end

    it "3. takes String, Symbol and Integer keys (:k and 'k' are one lock), ArgumentError for others" do
      [nil, 1.5, Object.new].each { |key| expect { MySQLMutex.new(key) }.to raise_error(ArgumentError, /mutex id/) }
      sym = MySQLMutex.new(:k)
      expect(sym.lock).to be(true)
      expect(Thread.new { MySQLMutex.new("k", 0).lock }.value).to be(false)
      expect(MySQLMutex.new(42).try_lock).to be(true)
      expect(sym.unlock).to be(true)
    end

    it "4. nil waits for ever; a negative or non-numeric timeout raises ArgumentError at new" do
      [-1, "5", true].each { |t| expect { MySQLMutex.new("t", t) }.to raise_error(ArgumentError, /timeout/) }
      held = MySQLMutex.new("forever")
      held.lock
      waiter = Thread.new { MySQLMutex.new("forever", nil).then { |m| [m.lock, m.unlock] } }
      wait_for(within: 10, message: "the waiter in GET_LOCK") { db.sessions.any? { |_, _, info| info.include?("GET_LOCK") && info.include?(name_of(held)) } }
      held.unlock
      expect(waiter.value).to eq([true, true])
    end

    it "5. counts nesting per thread: a thread's second mutex on a key is true at once, the lock given back after both unlock" do
      a = MySQLMutex.new("nest")
      b = MySQLMutex.new("nest", 0)
      expect([a.lock, b.lock]).to eq([true, true])
      expect(MySQLMutex.active_locks).to eq(Thread.current => { "nest" => 2 })
      expect(a.unlock).to be(true)
      expect(db.lock_holder(name_of(a))).not_to be_nil
      expect(b.unlock).to be(true)
      expect(db.lock_holder(name_of(a))).to be_nil
      expect(MySQLMutex.active_locks).to eq({})
    end

    it "6. new does no I/O; errors come from lock as MegaMutex errors; a deadlock between threads is DeadlockError" do
      port = MemcachedServer.free_port
      m = MySQLMutex.new("io", 1, false, "mysql://root@127.0.0.1:#{port}")
      expect { m.lock }.to raise_error(MegaMutex::ConnectionError, /127\.0\.0\.1:#{port}/)
      expect(m.locked?).to be(false)

      gates = [Queue.new, Queue.new]
      results = Queue.new
      threads = [%w[d1 d2], %w[d2 d1]].map.with_index do |(first, second), i|
        quiet_thread do
          m1 = MySQLMutex.new(first, 10)
          m1.lock
          results << :held
          gates[i].pop
          outcome = begin
            MySQLMutex.new(second, 10).then { |m2| m2.lock && m2.unlock && :got }
          rescue MegaMutex::DeadlockError => e
            [:deadlock, e.class.ancestors.include?(MegaMutex::ServerError)]
          end
          m1.unlock
          outcome
        end
      end
      2.times { results.pop } # each holds its first lock
      gates[0] << true
      wait_for(within: 10, message: "the first thread to wait") { db.sessions.any? { |_, _, info| info.include?("GET_LOCK") } }
      gates[1] << true
      expect(threads.map(&:value)).to contain_exactly(:got, [:deadlock, true])
    end

    it "7. a lock found lost: unlock returns false, locked? stays true, a second unlock is false too" do
      m = MySQLMutex.new("lost")
      other = MySQLMutex.new("kept")
      expect([m.lock, other.lock]).to eq([true, true])
      other.unlock
      m2 = MySQLMutex.new("lost") # nested on the same thread
      m2.lock
      db.sql("KILL CONNECTION #{db.lock_holder(name_of(m))}")
      expect(m2.unlock).to be(true) # the inner release only counts down
      expect(m.unlock).to be(false)
      expect(m.locked?).to be(true)
      expect(m.unlock).to be(false)
      expect(MySQLMutex.active_locks).to eq({})
      expect(MySQLMutex.new("lost", 0).try_lock).to be(true) # nothing left behind
    end

    it "8. active_locks is a snapshot by thread" do
      m = MySQLMutex.new("snap")
      m.lock
      snapshot = MySQLMutex.active_locks
      snapshot[Thread.current]["snap"] = 99
      snapshot.clear
      expect(MySQLMutex.active_locks).to eq(Thread.current => { "snap" => 1 })
      other = Thread.new { MySQLMutex.active_locks }.value
      expect(other.keys).to eq([Thread.current]) # every thread of the process, by thread
      m.unlock
    end

    it "9. logs MegaMutex's release line to MegaMutex's logger, no MySQLMutex: lines" do
      io = StringIO.new
      MegaMutex.configure { |c| c.logger = Logger.new(io, level: :debug) }
      expect(MySQLMutex.synchronize("logged") { :ran }).to be(true)
      expect(io.string).to match(/MegaMutex: released #{@namespace}:logged \(lock_id: /)
      expect(io.string).not_to include("MySQLMutex:")
    end

    it "10. excluse_unlock is unlock (the original's raised ThreadError)" do
      m = MySQLMutex.new("ex")
      expect(m.excluse_unlock).to be(false)
      m.lock
      expect(m.excluse_unlock).to be(true)
      expect(db.lock_holder(name_of(m))).to be_nil
    end

    it "11. lock stores true or false whatever a subclass's get_lock returns" do
      klass = Class.new(DistributedMutex) do
        private

        def get_lock = :granted
        def release_lock = 1
      end
      m = klass.new("x")
      expect(m.lock).to be(true)
      expect(m.locked?).to be(true)
      expect(m.unlock).to be(true)
    end

    it "12. MutexLockTimeout is a MegaMutex::TimeoutError with id and timeout, its message always the original's" do
      expect(MutexLockTimeout.ancestors).to include(MegaMutex::TimeoutError, MegaMutex::Error, StandardError)
      expect(MutexLockReleaseFailure.ancestors).to include(MegaMutex::Error, StandardError)
      expect(MutexLockTimeout.new("other").message).to eq("Mutex lock operation timed out")
      expect(MutexLockReleaseFailure.new("other").message).to eq("Failed to release Mutex lock. This should be regarded as a system bug.")
      held = MySQLMutex.new("timeout")
      held.lock
      error = begin
        quiet_thread { MySQLMutex.new("timeout", 0.1, true).lock }.value
      rescue MutexLockTimeout => e
        e
      end
      expect([error.id, error.timeout, error.to_s]).to eq(["timeout", 0.1, "Mutex lock operation timed out"])
      held.unlock
    end

    it "13. an interrupt ends a wait at once and leaves nothing held or queued" do
      held = MySQLMutex.new("intr")
      held.lock
      waiter = quiet_thread { Timeout.timeout(0.3) { MySQLMutex.new("intr", nil).lock } }
      expect { waiter.value }.to raise_error(Timeout::Error)
      expect(MySQLMutex.active_locks).to eq(Thread.current => { "intr" => 1 })
      expect(db.lock_holder(name_of(held))).not_to be_nil
      held.unlock
      expect(db.lock_holder(name_of(held))).to be_nil # no queued waiter took it
    end

    it "13. an interrupt at any point of lock or synchronize leaves nothing held (lock: unless it returned)", :slow do
      interrupter = InterruptPoints::Interrupter.new(Thread.current)
      main = Thread.current
      points = Hash.new(0)
      late = 0
      %i[lock synchronize].each do |kind|
        (1..).each do |k|
          m = MySQLMutex.new("ipoint")
          count = 0
          fired = false
          trace = TracePoint.new(:line, :call, :return, :c_call, :c_return, :b_call, :b_return) do |tp|
            next unless Thread.current == main && tp.path&.start_with?(InterruptPoints::LIB)

            count += 1
            next unless count == k

            fired = true
            @interrupt_point = "#{tp.event} #{tp.method_id} #{File.basename(tp.path)}:#{tp.lineno}"
            interrupter.interrupt_now
          end
          returned = false
          begin
            trace.enable do
              kind == :lock ? m.lock : m.synchronize { nil }
              returned = true
            end
          rescue InterruptPoints::Interrupted
            nil
          ensure
            trace.disable
          end
          unless fired # the call ran to its end before event k: done with this kind
            m.unlock if kind == :lock
            break
          end

          points[kind] += 1
          where = "#{kind}, interrupt at event #{k}: #{@interrupt_point}"
          if kind == :lock && m.locked?
            # Returned, or interrupted as it returned (Ruby checks there too):
            # taken and recorded either way, and unlock gives it back.
            late += 1 unless returned
            expect(MySQLMutex.active_locks).to eq(Thread.current => { "ipoint" => 1 }), where
            expect(m.unlock).to be(true), where
          else
            expect(returned).to be(false), where if kind == :lock
            expect(m.locked?).to be(false), where
          end
          expect(MySQLMutex.active_locks).to eq({}), where
          expect(MegaMutex::Lock.holds).to be_empty, where
          expect(MegaMutex.get_current_lock("ipoint")).to be_nil, where
        end
      end
      expect(points.values).to all(be > 10)
      expect(late).to be <= 2 # only at the very end of lock (its return)
    ensure
      interrupter&.stop
    end

    it "14. defines neither GlobalMutex nor the original's require names" do
      expect(defined?(GlobalMutex)).to be_nil
      expect { require "mysql_mutex" }.to raise_error(LoadError)
    end
  end
end
