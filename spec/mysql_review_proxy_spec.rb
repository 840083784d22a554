# frozen_string_literal: true

require "spec_helper"
require "timeout"
require_relative "support/mysql_review_proxy"

# Session 6's hostile review of the :mysql store: a proxy in front of the
# suite's MariaDB stalls or cuts the reply to GET_LOCK, RELEASE_LOCK or
# IS_USED_LOCK. An unknown reply is never read as "taken", "free" or
# "released": a take raises, a release or a check says lost, within
# io_timeout; the server frees what the dropped session held.
RSpec.describe "backend :mysql behind a proxy that stalls or cuts replies" do
  include MariaDBHelpers

  let(:db) { Servers::MariaDB.shared }
  let(:proxy) { MysqlReviewProxy.new(db.port).start }

  before do
    skip "mariadbd is not installed" unless Servers::MariaDB.available?
    ns = @namespace
    url = proxy.url
    MegaMutex.configure do |c|
      c.backend = :mysql
      c.mysql_url = url
      c.namespace = ns
      c.lock_ttl = 1 # wait_timeout 3 s: a session a stalled proxy keeps open is dropped soon
      c.io_timeout = 0.5
    end
  end

  after { proxy.stop }

  def name_of(id)
    MegaMutex::Native::Client._mysql_lock_name(MegaMutex::Key.for(@namespace, id))
  end

  # A lock taken on the server directly (not through the proxy).
  def direct_lock(id)
    client = MegaMutex::Native::Client.mysql("127.0.0.1", db.port, nil, "root", nil, nil, 2000, 2000, 30)
    state = Struct.new(:version, :attempts, :waited, :holder, :outcome_unknown, :fencing_token).new
    taken = client._acquire(state, MegaMutex::Key.for(@namespace, id), "direct:1:0000000000000001", 30, 0, 0.002, 0.05)
    [client, taken]
  end

  %i[stall cut drop_and_close close_before].each do |fault|
    it "GET_LOCK's reply #{fault}: the take raises ConnectionError, and whatever the server granted is freed or expires" do
      proxy.inject(/GET_LOCK/, fault, times: 1)
      lock = MegaMutex::Lock.new("get", timeout: 0)
      expect { Timeout.timeout(10) { lock.try_lock } }.to raise_error(MegaMutex::ConnectionError)
      expect(lock.owned?).to be(false)
      expect(proxy.fired(fault)).to eq(1)
      # The server frees it when it sees the session go (a stalled proxy keeps
      # it open: then after wait_timeout, lock_ttl + 2 s).
      wait_for(within: 15, message: "the lock freed on the server") { db.lock_holder(name_of("get")).nil? }
      expect([lock.try_lock, lock.unlock]).to eq([true, true])
    end

    it "RELEASE_LOCK's reply #{fault}: unlock says lost (false), never silently released, and nothing stays held" do
      lock = MegaMutex::Lock.new("release", timeout: 0)
      expect(lock.try_lock).to be(true)
      proxy.inject(/RELEASE_LOCK/, fault, times: 1)
      expect(Timeout.timeout(10) { lock.unlock }).to be(false)
      expect(lock.lost?).to be(true)
      wait_for(within: 15, message: "the lock freed on the server") { db.lock_holder(name_of("release")).nil? }
      expect([lock.try_lock, lock.unlock]).to eq([true, true])
    end
  end

  it "IS_USED_LOCK's reply cut while held: the renewer says lost (the session went, and the lock with it)" do
    lock = MegaMutex::Lock.new("refresh", timeout: 0)
    expect(lock.try_lock).to be(true)
    proxy.inject(/IS_USED_LOCK/, :cut, times: 1)
    wait_for(within: 10, message: "the lock reported lost") { lock.lost? }
    wait_for(within: 10, message: "the lock freed on the server") { db.lock_holder(name_of("refresh")).nil? }
    expect(lock.unlock).to be(false)
  end

  it "a lock held elsewhere and IS_USED_LOCK's reply cut for locked?: an error, never 'free'" do
    client, taken = direct_lock("read")
    expect(taken).to be(true)
    proxy.inject(/IS_USED_LOCK/, :cut, times: 1)
    expect { MegaMutex::Lock.new("read").locked? }.to raise_error(MegaMutex::ConnectionError)
    expect(MegaMutex::Lock.new("read").locked?).to be(true)
    expect(MegaMutex::Lock.new("read", timeout: 0).try_lock).to be(false)
  ensure
    client&.close
  end

  it "a waiter whose GET_LOCK reply stalls raises ConnectionError after its wait and io_timeout, never enters" do
    client, taken = direct_lock("wait")
    expect(taken).to be(true)
    proxy.inject(/GET_LOCK/, :stall)
    lock = MegaMutex::Lock.new("wait", timeout: 1)
    expect { Timeout.timeout(15) { lock.lock } }.to raise_error(MegaMutex::ConnectionError)
    expect(lock.owned?).to be(false)
  ensure
    client&.close
  end
end
