# frozen_string_literal: true

require "spec_helper"
require "logger"
require "stringio"
require_relative "support/quorum_servers"

# The :quorum backend against servers that die, restart empty, stall or
# already hold the lock for someone else. Each example has three servers of
# its own (started with -M, old enough to count), since it breaks them.
RSpec.describe "The :quorum backend under server faults" do
  # Three servers per example, all started (and aged) at once.
  before(:all) { @sets = QuorumServers.start_sets(self.class.descendant_filtered_examples.size, 3) }
  after(:all) { @sets.flatten.each(&:stop) }

  let(:servers) { @sets.pop or raise "no servers left" }
  let(:logged) { StringIO.new }

  before do
    MegaMutex.configure do |c|
      QuorumServers.configure(c, servers)
      c.namespace = @namespace
      c.io_timeout = 0.5
      c.connect_timeout = 0.5
      c.logger = Logger.new(logged)
    end
  end

  after { servers.each(&:stop) }

  # Puts `token` under `key` on `server` for `ttl` seconds, as another
  # client's take would have.
  def plant(server, key, token, ttl: 60)
    expect(server.command("add #{key} 0 #{ttl} #{token.bytesize}\r\n#{token}")).to eq("STORED\r\n")
  end

  def holder_on(server, key)
    server.get(key)
  end

  it "does not grant twice when a server of a bare majority restarts empty: the restarted one does not count" do
    key = key_for("job")
    # Someone else's lease survives on server 2 only: the holder gets servers 0 and 1, a bare majority.
    plant(servers[2], key, "someone-else")
    holder = MegaMutex::Lock.new("job")
    expect(holder.try_lock).to be(true)
    token = holder.holder # read back from the majority
    expect(servers.map { |s| holder_on(s, key) }).to eq([token, token, "someone-else"])

    servers[0].restart # kill -9, same port, every item gone
    expect(servers[2].delete(key)).to be(true) # the other lease ends
    # Servers 0 and 2 are free now: counted, they would make a majority for a second holder.
    outcome = Thread.new { MegaMutex.with_distributed_mutex("job", timeout: 1) { :ran } rescue $! }.value
    expect(outcome).to be_a(MegaMutex::TimeoutError)
    # The holder itself keeps one server that counts: it cannot prove a
    # majority any more, and says so (the Redlock rule; nobody else could
    # take it either until the restarted server has aged).
    expect(holder.unlock).to be(false)
    expect(holder.lost?).to be(true)
  end

  it "counts a restarted server again once it has been up for longer than quorum_max_ttl, and the holder's renewal has put the lock back on it" do
    holder = MegaMutex::Lock.new("job")
    expect(holder.try_lock).to be(true)
    token = holder.holder
    servers[0].restart
    QuorumServers.wait_mature(servers[0])
    wait_for(within: 10, message: "the renewal to write the lock to the restarted server") { holder_on(servers[0], key_for("job")) == token }
    servers[1].stop # with 0 and 2 left, the lock still holds and nobody else gets it
    outcome = Thread.new { MegaMutex.with_distributed_mutex("job", timeout: 0) { :ran } rescue $! }.value
    expect(outcome).to be_a(MegaMutex::TimeoutError)
    expect(holder.lost?).to be(false)
    expect(holder.unlock).to be(true)
  end

  it "does not count a flushed server until quorum_max_ttl has passed" do
    key = key_for("job")
    plant(servers[2], key, "someone-else")
    holder = MegaMutex::Lock.new("job")
    expect(holder.try_lock).to be(true)
    servers[0].flush_all
    servers[2].delete(key)
    outcome = Thread.new { MegaMutex.with_distributed_mutex("job", timeout: 1) { :ran } rescue $! }.value
    expect(outcome).to be_a(MegaMutex::TimeoutError)
    holder.unlock
  end

  it "keeps taking and keeping locks with one server paused (SIGSTOP)" do
    servers[1].pause
    begin
      ran = 0
      20.times { MegaMutex.with_distributed_mutex("job", timeout: 5) { ran += 1 } }
      expect(ran).to eq(20)
      # Held across several renewals (lock_ttl 2: every 0.67 s) with one server silent.
      lock = MegaMutex::Lock.new("long")
      expect(lock.try_lock).to be(true)
      token = servers[0].get(key_for("long"))
      renewals_seen = wait_for(within: 10, every: 0.1, message: "two leases to pass") do
        servers.values_at(0, 2).all? { |s| holder_on(s, key_for("long")) == token } &&
          (@since ||= monotonic) && monotonic - @since > 2 * QuorumServers::MAX_TTL + 1
      end
      expect(renewals_seen).to be(true)
      expect(lock.lost?).to be(false)
      expect(Thread.new { MegaMutex.with_distributed_mutex("long", timeout: 0) { :ran } rescue $! }.value)
        .to be_a(MegaMutex::TimeoutError)
      expect(lock.unlock).to be(true)
    ensure
      servers[1].resume
    end
  end

  it "raises ConnectionError naming the quorum, and never runs the block, with two of three servers down" do
    servers[0].stop
    servers[2].stop
    ran = false
    expect { MegaMutex.with_distributed_mutex("job", timeout: 5) { ran = true } }
      .to raise_error(MegaMutex::ConnectionError, /quorum of 3 memcached servers failed to take a lock: 1 of the 2 needed/)
    expect(ran).to be(false)
  end

  it "raises ConnectionError with two of three servers paused, and never runs the block" do
    servers[0].pause
    servers[2].pause
    ran = false
    begin
      expect { MegaMutex.with_distributed_mutex("job", timeout: 5) { ran = true } }
        .to raise_error(MegaMutex::ConnectionError, /quorum of 3 .*timed out/)
    ensure
      servers[0].resume
      servers[2].resume
    end
    expect(ran).to be(false)
  end

  it "undoes a take that won only a minority, on every server it reached" do
    key = key_for("job")
    plant(servers[1], key, "someone-else")
    plant(servers[2], key, "someone-else")
    outcome = Thread.new { MegaMutex.with_distributed_mutex("job", timeout: 0) { :ran } rescue $! }.value
    expect(outcome).to be_a(MegaMutex::TimeoutError)
    expect(outcome.holder).to eq("someone-else")
    expect(holder_on(servers[0], key)).to be_nil # won there, then given back
  end

  it "reports a lock that kept no majority at renewal as lost" do
    lock = MegaMutex::Lock.new("job")
    expect(lock.try_lock).to be(true)
    servers[0].delete(key_for("job"))
    servers[1].command("set #{key_for('job')} 0 60 5\r\nother")
    wait_for(within: 5, message: "the loss") { lock.lost? }
    expect(logged.string).to match(/lost/i)
    expect(lock.unlock).to be(false)
  end
end
