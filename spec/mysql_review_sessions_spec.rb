# frozen_string_literal: true

require "spec_helper"
require "mega_mutex/distributed_mutex"
require "open3"
require "timeout"
require_relative "support/mysql_review_helpers"

# Session 6's hostile review of the :mysql store: a session killed from
# elsewhere, a server restarted or full, a fork - at each step of take,
# hold and release, through MegaMutex's API. Never a grant on an error,
# never "released" for a lock the server had already dropped.
RSpec.describe "backend :mysql: sessions killed, servers restarted or full" do
  include MariaDBHelpers
  include MysqlReviewHelpers

  before { skip "mariadbd is not installed" unless Servers::MariaDB.available? }

  after do
    @review_threads&.each do |t|
      t.kill.join(5)
    rescue Exception # rubocop:disable Lint/RescueException -- its own expectation looked at it
      nil
    end
    @servers&.each(&:stop)
  end

  # A private server (restarted or filled here, so never the suite's).
  def private_server(*args)
    server = Servers::MariaDB.new(args: args).start
    (@servers ||= []) << server
    server
  end

  def name_of(id)
    MegaMutex::Native::Client._mysql_lock_name(MegaMutex::Key.for(@namespace, id))
  end

  def get_lock_sessions(db)
    db.sessions.select { |_, _, info| info.include?("GET_LOCK") }
  end

  context "on the suite's server" do
    let(:db) { Servers::MariaDB.shared }

    before { use_mariadb(db, lock_ttl: 3) }

    it "a waiter whose session is killed (KILL CONNECTION) gets ConnectionError, and the lock it already held is reported lost, not released" do
      other = MegaMutex::Lock.new("b")
      other.lock
      outcome = Queue.new
      holder = quiet_thread do
        MegaMutex.with_distributed_mutex("a") do |a|
          begin
            MegaMutex::Lock.new("b", timeout: 30).lock
            outcome << :granted_b
          rescue StandardError => e
            outcome << e.class
          end
          outcome << a.unlock
          outcome << a.lost?
        end
      rescue MegaMutex::LockLostError
        outcome << :lock_lost_error
      end
      wait_for(within: 10, message: "the holder of a waiting for b") { get_lock_sessions(db).size == 1 }
      db.sql("KILL CONNECTION #{get_lock_sessions(db).first.first}")
      expect(Timeout.timeout(10) { outcome.pop }).to eq(MegaMutex::ConnectionError)
      expect(Timeout.timeout(10) { [outcome.pop, outcome.pop] }).to eq([false, true]) # a is lost, not "released"
      Timeout.timeout(10) { holder.join }
      expect(db.lock_holder(name_of("a"))).to be_nil
      expect(MegaMutex::Lock.new("b").locked?).to be(true) # b is still other's
      expect(other.unlock).to be(true)
    end

    it "a waiter whose GET_LOCK is killed from elsewhere (KILL QUERY) gets a ServerError, never the lock" do
      other = MegaMutex::Lock.new("k")
      other.lock
      waiter = quiet_thread { MegaMutex::Lock.new("k", timeout: 30).lock }
      wait_for(within: 10, message: "the waiter in GET_LOCK") { get_lock_sessions(db).size == 1 }
      db.sql("KILL QUERY #{get_lock_sessions(db).first.first}")
      expect { Timeout.timeout(10) { waiter.value } }.to raise_error(MegaMutex::ServerError, /GET_LOCK returned NULL/)
      expect(MegaMutex.get_current_lock("k")).to eq(other.holder)
      expect(other.unlock).to be(true)
      quiet_thread { MegaMutex::Lock.new("k", timeout: 0).then { |l| [l.try_lock, l.unlock] } }.value.then do |taken|
        expect(taken).to eq([true, true]) # the waiter's thread left nothing behind
      end
    end

    it "a release whose RELEASE_LOCK is killed from elsewhere (KILL QUERY on the idle session) says lost, and leaves nothing held" do
      lock = MegaMutex::Lock.new("r")
      lock.lock
      db.sql("KILL QUERY #{db.lock_holder(name_of('r'))}") # lands on the idle session: its next statement is cut
      released = lock.unlock
      # Either the release got through (the kill was spent on nothing) or it
      # was cut and the session closed: never held after the call.
      expect([true, false]).to include(released)
      wait_for(within: 10, message: "the lock freed") { db.lock_holder(name_of("r")).nil? }
      again = MegaMutex::Lock.new("r", timeout: 0)
      expect([again.try_lock, again.unlock]).to eq([true, true])
    end

    # A DBA's tool that kills idle connections (pt-kill --idle-time) ended
    # the pooled session a read was about to use: locked? raised
    # ConnectionError (lost connection, 2013) although the server was fine.
    # A take already tried again on a new session; a read does too now.
    it "a read on a pooled session killed while idle asks again on a new session instead of raising" do
      lock = MegaMutex::Lock.new("idle-killed")
      expect(lock.locked?).to be(false) # a pooled session, idle now
      idle = db.sessions.select { |_, command, _| command == "Sleep" }
      idle.each { |id, _, _| db.sql("KILL CONNECTION #{id}") }
      expect(idle).not_to be_empty
      expect(lock.locked?).to be(false)
      holder = quiet_thread { MegaMutex::Lock.new("idle-killed").tap(&:lock) }.value
      idle = db.sessions.select { |_, command, _| command == "Sleep" } - [[db.lock_holder(name_of("idle-killed")).to_s, "Sleep", ""]]
      idle.each { |id, _, _| db.sql("KILL CONNECTION #{id}") }
      expect(MegaMutex.get_current_lock("idle-killed")).to eq(holder.holder)
      expect(quiet_thread { holder.unlock }.value).to be(true)
    end

    it "a child forked inside a MySQLMutex block leaves the parent's lock and session alone when it exits" do
      script = review_script_prelude(db.url, lock_ttl: 3) + <<~RUBY
        m = MySQLMutex.new("forked", 0)
        m.synchronize do
          pid = fork do
            # The child sees the parent's object: it holds nothing through it.
            puts "child locked?=\#{m.locked?} unlock=\#{m.unlock} take=\#{MySQLMutex.new('forked', 0).lock}"
          end
          Process.wait(pid)
          GC.start
          puts "parent locked?=\#{m.locked?} held=\#{!MegaMutex::Lock.new('forked').holder.nil?}"
          puts "other=\#{Thread.new { MySQLMutex.new('forked', 0).lock }.value}"
        end
        puts "after=\#{MegaMutex.get_current_lock('forked').inspect}"
      RUBY
      out, err, status = Open3.capture3(RbConfig.ruby, "-e", script)
      expect(status).to be_success, err
      expect(out.lines.map(&:chomp)).to eq(["child locked?=false unlock=false take=false",
                                            "parent locked?=true held=true", "other=false", "after=nil"])
    end
  end

  it "a server restarted between take and release: unlock says lost (false), lost? is true, and the next take works" do
    server = private_server
    use_mariadb(server, lock_ttl: 3)
    lock = MegaMutex::Lock.new("restart")
    lock.lock
    server.restart
    expect(lock.unlock).to be(false)
    expect(lock.lost?).to be(true)
    again = MegaMutex::Lock.new("restart", timeout: 0)
    expect([again.try_lock, again.unlock]).to eq([true, true])
  end

  it "a server restarted under synchronize: the block ends in LockLostError, never silently fine" do
    server = private_server
    use_mariadb(server, lock_ttl: 3, on_lock_lost: :raise)
    expect do
      MegaMutex.with_distributed_mutex("restart-block") { server.restart }
    end.to raise_error(MegaMutex::LockLostError)
  end

  it "a server at max_connections: a take is a ConnectionError naming it, never a grant; the held locks stay held" do
    server = private_server("--max-connections=10") # MariaDB's least
    use_mariadb(server, lock_ttl: 5)
    holders = []
    # Sessions until the server refuses one (max_connections, + 1 for SUPER).
    error = nil
    20.times do |i|
      lock = MegaMutex::Lock.new("full-#{i}")
      t = quiet_thread { lock.lock }
      begin
        Timeout.timeout(10) { t.value }
        holders << [t, lock]
      rescue MegaMutex::ConnectionError => e
        error = e
        break
      end
    end
    expect(error&.message).to match(/Too many connections/)
    expect(holders.size).to be >= 2
    expect { quiet_thread { MegaMutex::Lock.new("full-0", timeout: 0).try_lock }.value }.to raise_error(MegaMutex::ConnectionError)
    expect { quiet_thread { MegaMutex::Lock.new("free", timeout: 0).try_lock }.value }.to raise_error(MegaMutex::ConnectionError)
    holders.each { |_, lock| expect(MegaMutex::Native::Client._mysql_lock_name(lock.key)).to start_with("mm=") }
    # Still held by their sessions: a refresh of each says so.
    holders.each { |_, lock| expect(lock.lost?).to be(false) }
  end

  # A server-wide statement limit (a DBA's max_statement_time against
  # runaway queries) cut every GET_LOCK wait short: a lock(timeout: 5)
  # failed after 0.5 s with "GET_LOCK returned NULL". MegaMutex's sessions
  # run no user query, so they lift the limit for themselves.
  it "a server with a global max_statement_time: a waiter waits out its own timeout, not the server's limit" do
    server = private_server
    server.sql("SET GLOBAL max_statement_time = 0.5")
    use_mariadb(server, lock_ttl: 30)
    holder = quiet_thread { MegaMutex::Lock.new("limited").tap(&:lock) }.value
    waiter = quiet_thread { MegaMutex::Lock.new("limited", timeout: 10).then { |l| [l.lock, l] } }
    waited_long = lambda do
      server.sql("SELECT TIME_MS FROM information_schema.PROCESSLIST WHERE INFO LIKE '%GET_LOCK%' AND ID <> CONNECTION_ID()")
            .any? { |(ms)| Float(ms) > 1000 }
    end
    wait_for(within: 10, message: "the waiter in GET_LOCK for more than 1 s, or ended") { !waiter.alive? || waited_long.call }
    expect(waiter.alive?).to be(true), -> { "the waiter ended: #{(waiter.value rescue $!).inspect}" }
    expect(holder.unlock).to be(true)
    taken, lock = Timeout.timeout(10) { waiter.value }
    expect(taken).to be(true)
    expect(quiet_thread { lock.unlock }.value).to be(true)
  end
end
