# frozen_string_literal: true

require "spec_helper"
require "mega_mutex/distributed_mutex"

# The distributed_mutex drop-in (lib/mega_mutex/distributed_mutex.rb) on a real MariaDB.
RSpec.describe "require 'mega_mutex/distributed_mutex'" do
  let(:db) { Servers::MariaDB.shared }

  before do
    skip "mariadbd is not installed" unless Servers::MariaDB.available?
    ns = @namespace
    url = db.url
    MegaMutex.configure do |c|
      c.backend = :mysql
      c.mysql_url = url
      c.namespace = ns
    end
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

  it "synchronize returns true when the block ran and false when the lock was busy; the class form too" do
    ran = []
    expect(MySQLMutex.new("s").synchronize { ran << 1 }).to be(true)
    expect(MySQLMutex.synchronize("s", 1) { ran << 2 }).to be(true)
    held = MySQLMutex.new("s")
    held.lock
    expect(Thread.new { MySQLMutex.synchronize("s", 0.1) { ran << 3 } }.value).to be(false)
    expect { quiet_thread { MySQLMutex.synchronize("s", 0.1, true) { ran << 4 } }.value }.to raise_error(MutexLockTimeout)
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

  it "takes a connection as a Hash (String or Symbol keys), a URL or an ActiveRecord connection, each its own sessions on that server" do
    hash = { "host" => "127.0.0.1", "port" => db.port, "username" => "root" }
    [hash, hash.transform_keys(&:to_sym), db.url, { socket: db.socket_path, username: "root", adapter: "mysql2" }].each do |conn|
      m = MySQLMutex.new("c", 1, false, conn)
      expect(m.lock).to be(true)
      expect(Thread.new { MySQLMutex.new("c", 0).lock }.value).to be(false) # the same server and name
      expect(m.unlock).to be(true)
    end
    # An ActiveRecord connection: its pool's db_config (Rails 6.1+) names the server.
    db_config = Struct.new(:configuration_hash).new({ adapter: "trilogy", host: "127.0.0.1", port: db.port, username: "root" })
    ar_connection = Struct.new(:pool).new(Struct.new(:db_config).new(db_config))
    m = MySQLMutex.new("c", 1, false, ar_connection)
    expect(m.lock).to be(true)
    expect(MegaMutex.get_current_lock("c")).to match(/:#{Process.pid}:/)
    expect(m.unlock).to be(true)
    expect { MySQLMutex.new("c", 1, false, 42) }.to raise_error(ArgumentError, /connection must be/)
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
end
