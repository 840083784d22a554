# frozen_string_literal: true

require_relative "support/fake_memcached"
require_relative "support/memcached_review_proxy"
require_relative "support/quorum_servers"

# A hostile review of the :memcached store (store_memcached.c) and its
# connection layer (memcached_conn.c, memcached_call.c): each example is an
# attack on "never grant a lock twice" - a server that answers late, twice,
# a byte at a time, with an error at each step, or not at all. Each example
# failed on the code before its fix (the commit names the path), or
# documents an attack that holds.
RSpec.describe "memcached store review" do
  # A native client on 127.0.0.1:`port` (a fake, a proxy or a server).
  def client_on(port)
    MegaMutex::Native::Client.new([["127.0.0.1", port]], 500, 1000, 1)
  end

  def client_for(fake)
    client_on(fake.port)
  end

  let(:fake) { FakeMemcached.new.start }
  let(:key) { key_for("x") }
  after { fake.stop }

  # Scripts the next gets: its true reply at once, then - once the client
  # has read it - `late` on the same connection, as a server that answers
  # twice (or a reply to an earlier request arriving late) would.
  def late_reply_after_next_gets(late)
    sent = Queue.new
    fake.on("gets", times: 1) do |cmd|
      cmd.reply(cmd.default_reply)
      cmd.fake.pause(0.05)
      cmd.reply(late)
      sent << true
    end
    sent
  end

  describe "bytes that arrive after a reply was read, before the next request" do
    it "are never read as the reply to the next read" do
      client = client_for(fake)
      sent = late_reply_after_next_gets("VALUE #{key} 0 6 1\r\nforged\r\nEND\r\n")
      expect(client._read(key)).to be_nil
      sent.pop
      expect(client._read(key)).to be_nil # the server holds nothing
    ensure
      client&.close
    end

    it "never grant a lock that another token holds (a late VALUE naming the taker)" do
      fake.put(key, "other")
      client = client_for(fake)
      # A late "reply" shaped as the take's own: the fence's incr, then a
      # read-back naming the taker's token.
      sent = late_reply_after_next_gets("ERROR\r\nVALUE #{key} 0 3 1\r\ntok\r\nEND\r\n")
      expect(client._read(key)).to eq("other")
      sent.pop
      state = Object.new
      expect(client._acquire(state, key, "tok", 5, 0, 0.01, 0.01)).to be(false)
      expect(fake.value(key)).to eq("other")
    ensure
      client&.close
    end
  end

  describe "a reply that arrives after its request gave up (timed out, interrupted)" do
    # The next gets: answered `late` after `delay` seconds.
    def late_answer(late, delay)
      sent = Queue.new
      fake.on("gets", times: 1) do |cmd|
        cmd.fake.pause(delay)
        cmd.reply(late)
        sent << true
      end
      sent
    end

    # Once the late reply ("tok" holds it) was sent on the given-up
    # connection: the key is "other"'s, and the client must read that.
    def expect_the_truth(client, sent)
      sent.pop
      fake.put(key, "other")
      expect(client._acquire(Object.new, key, "tok", 5, 0, 0.01, 0.01)).to be(false)
      expect(client._read(key)).to eq("other")
    end

    it "is never read as the reply to the next request after a timeout" do
      client = MegaMutex::Native::Client.new([["127.0.0.1", fake.port]], 500, 200, 1)
      sent = late_answer("VALUE #{key} 0 3 1\r\ntok\r\nEND\r\n", 0.5)
      expect { client._read(key) }.to raise_error(MegaMutex::ConnectionError, /timed out/)
      expect_the_truth(client, sent)
    ensure
      client&.close
    end

    it "is never read as the reply to the next request after an interrupt" do
      client = client_for(fake)
      sent = late_answer("VALUE #{key} 0 3 1\r\ntok\r\nEND\r\n", 0.3)
      reader = Thread.new do
        Thread.current.report_on_exception = false
        client._read(key)
      end
      wait_for(message: "the read to be in progress") { fake.count("gets") >= 1 && reader.status == "sleep" }
      reader.raise(RuntimeError, "stop")
      expect { reader.value }.to raise_error(RuntimeError, "stop")
      expect_the_truth(client, sent)
    ensure
      client&.close
    end
  end

  describe "a proxy between the client and memcached (mcrouter, twemproxy)" do
    let(:server) { MemcachedServer.new.start }
    let(:proxy) { MemcachedReviewProxy.new(server.port) }
    after do
      proxy.stop
      server.stop
    end

    # The release's one-round-trip cas trusts a CAS read on the same, still
    # open connection: "a connection cannot outlive the server process it
    # was opened to" (docs/design.md) - false behind a proxy that keeps its
    # clients' connections. No fix in this store's files keeps the release
    # at one round trip with memcached 1.6.18 (a client-chosen CAS, meta
    # "ms ... E<token>", came in a later memcached): connect directly.
    it "a holder whose lock was lost to a restart behind the proxy never releases the new holder's lock" do
      pending("the one-round-trip release assumes no proxy keeps the connection across a server restart: connect directly (README)")
      via_proxy = client_on(proxy.port)
      direct = client_on(server.port)
      a = Object.new
      expect(via_proxy._acquire(a, key, "tok-a", 30, 0, 0.01, 0.01)).to be(true) # the first store: CAS 1
      server.restart # forgets the lock; its CAS counter starts again
      b = Object.new
      expect(direct._acquire(b, key, "tok-b", 30, 0, 0.01, 0.01)).to be(true) # the first store again: CAS 1
      # a's connection to the proxy is still open: its CAS "proves" nothing.
      expect(via_proxy._release(key, "tok-a", a.instance_variable_get(:@version))).to be(false)
      expect(server.get(key)).to eq("tok-b")
    ensure
      via_proxy&.close
      direct&.close
    end
  end

  describe "a lock removed under its holder (evicted, expired, forced) and taken by another" do
    let(:server) { MemcachedServer.new.start }
    after { server.stop }

    it "the first holder's renewal reports it lost and re-creates nothing; its release removes nothing" do
      a_client = client_on(server.port)
      b_client = client_on(server.port)
      a = Object.new
      expect(a_client._acquire(a, key, "tok-a", 30, 0, 0.01, 0.01)).to be(true)
      server.delete(key) # as an eviction would
      expect(a_client._extend(key, "tok-a", 30)).to be(false) # lost, not re-created
      expect(server.get(key)).to be_nil
      b = Object.new
      expect(b_client._acquire(b, key, "tok-b", 30, 0, 0.01, 0.01)).to be(true)
      expect(a_client._extend(key, "tok-a", 30)).to be(false)
      # a's CAS is a's item's, on the connection it was read on: the cas
      # finds b's item (another CAS), and the owner check says lost.
      expect(a_client._release(key, "tok-a", a.instance_variable_get(:@version))).to be(false)
      expect(server.get(key)).to eq("tok-b")
      expect(b_client._release(key, "tok-b", b.instance_variable_get(:@version))).to be(true)
    ensure
      a_client&.close
      b_client&.close
    end
  end

  describe "a server that restarts (forgets everything) during a renewal" do
    it "between the renewal's read and its cas: lost, and the lock is not re-created" do
      client = client_for(fake)
      state = Object.new
      expect(client._acquire(state, key, "tok", 5, 0, 0.01, 0.01)).to be(true)
      fake.on("cas", times: 1) do |cmd|
        cmd.fake.put(cmd.key, "", ttl: 2_592_001) # an expiry in 1970: gone, as after a restart
        cmd.close # the process that had the connection is gone
      end
      expect(client._extend(key, "tok", 5)).to be(false)
      expect(fake.value(key)).to be_nil
      expect(fake.count("cas")).to eq(1) # the retry read "absent" and wrote nothing
    ensure
      client&.close
    end
  end

  # An item with an empty value (not a token any client writes: someone
  # else's) keeps every take out. What reads the lock must say it is held,
  # not "free" - the operator would look for the wrong cause.
  describe "a lock whose item has an empty value" do
    it "is held, by \"(an empty value)\", for every read (:memcached)" do
      fake.put(key, "")
      client = client_for(fake)
      state = Object.new
      expect(client._acquire(state, key, "tok", 5, 0, 0.01, 0.01)).to be(false)
      expect(state.instance_variable_get(:@holder)).to eq("(an empty value)")
      expect(client._read(key)).to eq("(an empty value)")
      expect(client._describe(key).first).to eq("(an empty value)")
      expect(client._release(key, "tok", nil)).to be(false)
      expect(fake.value(key)).to eq("")
    ensure
      client&.close
    end

    it "is held, by \"(an empty value)\", for every read (:quorum)" do
      servers = QuorumServers.shared
      servers.each { |s| expect(s.command("set #{key} 0 60 0\r\n")).to eq("STORED\r\n") }
      addresses = servers.map { |s| s.address.split(":").then { |host, port| [host, port.to_i] } }
      client, = MegaMutex::Native::Client._quorum_open(addresses, 500, 500, QuorumServers::MAX_TTL)
      state = Object.new
      expect(client._acquire(state, key, "tok", QuorumServers::MAX_TTL, 0, 0.01, 0.01)).to be(false)
      expect(client._read(key)).to eq("(an empty value)")
    ensure
      client&.close
      servers&.each { |s| s.delete(key) }
    end
  end
end
