# frozen_string_literal: true

require "spec_helper"
require "timeout"
require "digest"

# The MariaDB store itself (ext/mega_mutex/store_mariadb.c), through
# Native::Client.mysql, against the suite's mariadbd (started on first use).
RSpec.describe "MariaDB store (Native::Client.mysql)" do
  # What _acquire fills in.
  class MysqlTakeState
    attr_accessor :version, :attempts, :waited, :holder, :outcome_unknown, :fencing_token
  end

  let(:db) { Servers::MariaDB.shared }
  let(:key) { "#{@namespace}:k" }
  let(:name) { MegaMutex::Native::Client._mysql_lock_name(key) }

  before { skip "mariadbd is not installed" unless Servers::MariaDB.available? }

  def client(socket: false)
    c = if socket
          MegaMutex::Native::Client.mysql(nil, nil, db.socket_path, "root", nil, nil, 2000, 2000, 30)
        else
          MegaMutex::Native::Client.mysql("127.0.0.1", db.port, nil, "root", nil, nil, 2000, 2000, 30)
        end
    (@clients ||= []) << c
    c
  end

  after { @clients&.each { |c| c.close unless c.closed? } }

  def take(client, key, token, timeout)
    state = MysqlTakeState.new
    [client._acquire(state, key, token, 30, timeout, 0.002, 0.05), state]
  end

  def token(n)
    "host:#{n}:#{format('%016x', n)}"
  end

  it "takes a free lock, refuses it to another session naming the holder, and frees it at release" do
    a = client
    b = client(socket: true)
    taken, state = take(a, key, token(1), 0)
    expect(taken).to be(true)
    expect(db.lock_holder(name)).not_to be_nil
    expect(b._read(key)).to eq(token(1))
    taken, other = take(b, key, token(2), 0)
    expect(taken).to be(false)
    expect(other.holder).to eq(token(1))
    expect(a._extend(key, token(1), 30)).to be(true)
    expect(a._release(key, token(1), state.version)).to be(true)
    expect(db.lock_holder(name)).to be_nil
    expect(b._read(key)).to be_nil
    expect(a._release(key, token(1), state.version)).to be(false) # not held any more
  end

  it "wakes a waiter blocked in the server as soon as the holder releases" do
    a = client
    b = client
    _, state = take(a, key, token(1), 0)
    waiter = Thread.new { take(b, key, token(2), 30) }
    wait_for(within: 30, message: "the waiter to block in GET_LOCK") { db.sessions.any? { |_, _, info| info.include?("GET_LOCK") } }
    a._release(key, token(1), state.version)
    taken, = Timeout.timeout(10) { waiter.value }
    expect(taken).to be(true)
    expect(b._read(key)).to eq(token(2))
  end

  it "ends a wait at Thread#raise and leaves nothing held or queued in the server, even when the release races it" do
    a = client
    b = client
    _, state = take(a, key, token(1), 0)
    5.times do |round|
      results = Queue.new
      taking = MysqlTakeState.new
      waiter = Thread.new do
        Thread.current.report_on_exception = false
        results << b._acquire(taking, key, token(2), 30, nil, 0.002, 0.05)
      end
      wait_for(within: 30, message: "the waiter to block") { db.sessions.any? { |_, _, info| info.include?("GET_LOCK") } }
      a._release(key, token(1), state.version) if round == 4 # a grant racing the interrupt
      waiter.raise(Interrupt)
      ended = begin
        waiter.value
        :returned
      rescue Interrupt
        :interrupted
      end
      expect(db.sessions.none? { |_, _, info| info.include?("GET_LOCK") }).to be(true)
      if results.empty? && taking.version
        # Granted, and the interrupt landed in Ruby just after _acquire
        # returned (a slow machine, valgrind): b holds it, as a caller would
        # whose own ensure then releases it.
        expect(round).to eq(4)
        expect(b._read(key)).to eq(token(2))
        expect(b._release(key, token(2), taking.version)).to be(true)
      elsif results.empty?
        expect(ended).to eq(:interrupted)
        if round == 4
          # A grant that raced the interrupt is given back - or, when the kill
          # itself failed (a loaded machine), the session is dropped, and the
          # server frees what it held as soon as it sees the connection gone.
          wait_for(within: 10, message: "the raced grant to be given back") { b._read(key).nil? }
        else
          expect(b._read(key)).to eq(token(1)) # b's session took nothing
        end
      else
        expect(results.pop).to be(true) # granted before the interrupt was seen: b holds it
        expect(b._read(key)).to eq(token(2))
      end
    end
  end

  it "reports ER_LOCK_DEADLOCK as a ServerError naming the lock; the victim keeps what it held" do
    a = client
    b = client
    take(a, "#{key}1", token(1), 0)
    take(b, "#{key}2", token(2), 0)
    t = Thread.new { take(a, "#{key}2", token(3), 30) }
    wait_for(within: 30, message: "a to wait") { db.sessions.any? { |_, _, info| info.include?("GET_LOCK") } }
    expect { take(b, "#{key}1", token(4), 30) }.to raise_error(MegaMutex::ServerError, /MariaDB deadlock.*#{Regexp.escape(key)}1/)
    expect(b._read("#{key}2")).to eq(token(2)) # the victim keeps its lock
    b._release("#{key}2", token(2), nil)
    expect(Timeout.timeout(10) { t.value }.first).to be(true)
  end

  it "finds the lock lost once its session is killed from elsewhere" do
    a = client
    _, state = take(a, key, token(1), 0)
    db.sql("KILL CONNECTION #{db.lock_holder(name)}")
    expect(a._extend(key, token(1), 30)).to be(false)
    expect(a._release(key, token(1), state.version)).to be(false)
    expect(take(a, key, token(2), 0).first).to be(true) # a new session for a new take
  end

  it "derives names within 64 bytes, readable where it can, whatever the key's length and case" do
    plain = MegaMutex::Native::Client._mysql_lock_name("app:report-2024")
    expect(plain).to eq("mm=app:report-2024")
    upper = MegaMutex::Native::Client._mysql_lock_name("app:Report")
    lower = MegaMutex::Native::Client._mysql_lock_name("app:report")
    expect(upper).not_to eq(lower)
    expect(upper).to match(/\Amm#app:report#\h{32}\z/)
    long = MegaMutex::Native::Client._mysql_lock_name("a" * 250)
    expect(long.bytesize).to be <= 64
    expect(long).to eq(long.downcase)
    expect(long[-32..]).to eq(Digest::SHA256.hexdigest("a" * 250)[0, 32])
  end

  it "holds locks on long and mixed-case keys as distinct locks" do
    a = client
    b = client
    keys = ["#{key}:Mixed", "#{key}:mixed", "#{key}:#{'x' * 200}", "#{key}:#{'x' * 201}"]
    keys.each_with_index { |k, i| expect(take(a, k, token(i), 0).first).to be(true) }
    keys.each_with_index do |k, i|
      expect(take(b, k, token(9), 0).first).to be(false)
      expect(b._read(k)).to eq(token(i))
    end
  end

  it "raises ConnectionError naming the server when it cannot connect" do
    bad = MegaMutex::Native::Client.mysql("127.0.0.1", Servers.free_port, nil, "root", nil, nil, 500, 500, 30)
    expect { take(bad, key, token(1), 0) }.to raise_error(MegaMutex::ConnectionError, /127\.0\.0\.1:\d+.*Can't connect/)
    bad.close
  end

  it "leaves the parent's session alone in a forked child that exits (its copy is freed without a word to the server)" do
    script = <<~RUBY
      $LOAD_PATH.unshift(#{File.join(SpecHelpers::ROOT, "lib").inspect})
      require "mega_mutex"
      S = Struct.new(:version, :attempts, :waited, :holder, :outcome_unknown, :fencing_token)
      a = MegaMutex::Native::Client.mysql(nil, nil, ARGV[0], "root", nil, nil, 2000, 2000, 30)
      a._acquire(S.new, ARGV[1], "host:1:0000000000000001", 30, 0, 0.002, 0.05) or abort "not taken"
      pid = fork { exit 0 } # a normal exit: Ruby frees the inherited client
      Process.wait(pid)
      GC.start
      puts a._extend(ARGV[1], "host:1:0000000000000001", 30)
      puts a._read(ARGV[1])
    RUBY
    out, err, status = Open3.capture3(RbConfig.ruby, "-e", script, db.socket_path, key)
    expect(status).to be_success, err
    expect(out.lines.map(&:chomp)).to eq(["true", "host:1:0000000000000001"])
  end
end
