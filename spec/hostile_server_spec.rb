# frozen_string_literal: true

require "timeout"
require "tmpdir"
require_relative "support/fake_memcached"
require_relative "support/fault_proxy"

# Servers that misbehave (issue 9, points 3, 5, 6 and 11, and connection
# errors): a fake memcached that answers errors, garbage or one byte at a
# time, and a proxy that injects faults into a real memcached. Whatever a
# server does, an error is an error - never "nobody holds it" - every call
# ends within its time bound, and no reply can corrupt memory.
RSpec.describe "hostile servers" do
  def use_servers(*addresses, io_timeout: 0.5, connect_timeout: 0.5)
    MegaMutex.configure do |c|
      c.memcache_servers = addresses
      c.io_timeout = io_timeout
      c.connect_timeout = connect_timeout
    end
  end

  def client_for(address, io_ms: 500)
    host, port = address.split(":")
    MegaMutex::Native::Client.new([[host, port.to_i]], 500, io_ms, 1)
  end

  describe "3: a SERVER_ERROR reply to gets is an error, never \"nobody holds it\"" do
    let(:fake) { FakeMemcached.new.start }
    after { fake.stop }

    before do
      fake.on("gets") { |cmd| cmd.reply("SERVER_ERROR out of memory writing get response\r\n") }
      use_servers(fake.address)
    end

    it "raises ServerError from every read path" do
      key = key_for("x")
      fake.put(key, "someone-else")
      expect { MegaMutex.get_current_lock("x") }.to raise_error(MegaMutex::ServerError, /out of memory writing get response/)
      expect { MegaMutex::Lock.new("x").locked? }.to raise_error(MegaMutex::ServerError)
      client = client_for(fake.address)
      expect { client._read(key) }.to raise_error(MegaMutex::ServerError, /#{fake.port}/)
      expect { client._extend(key, "tok", 5) }.to raise_error(MegaMutex::ServerError)
      expect { client._release(key, "tok", nil) }.to raise_error(MegaMutex::ServerError)
      state = Object.new
      expect { client._acquire(state, key, "tok", 5, 0, 0.01, 0.01) }.to raise_error(MegaMutex::ServerError)
      expect(state.instance_variable_get(:@outcome_unknown)).to be(true) # its add was sent
      expect(fake.value(key)).to eq("someone-else")
    ensure
      client&.close
    end

    it "mega_mutex status reports the error (exit 69), not \"free\"" do
      out, err, status = Open3.capture3({ "MEMCACHE_SERVERS" => fake.address }, RbConfig.ruby,
                                        "-I", File.join(SpecHelpers::ROOT, "lib"),
                                        File.join(SpecHelpers::ROOT, "exe", "mega_mutex"), "status", "x")
      expect(status.exitstatus).to eq(69)
      expect(err).to match(/#{fake.port}.*SERVER_ERROR out of memory writing get response/)
      expect(out).not_to match(/free/)
    end

    it "refuses to take a lock it cannot read back, and runs no block" do
      ran = false
      # (It used to spin: the lock read back "absent" after every add.)
      expect { MegaMutex.with_distributed_mutex("x", timeout: 2) { ran = true } }.to raise_error(MegaMutex::ServerError)
      expect(ran).to be(false)
    end
  end

  describe "3 (end to end): a proxy answering gets with SERVER_ERROR for a while" do
    let(:server) { MemcachedServer.new.start }
    let(:proxy) { FaultProxy.new(server.port).start }
    after do
      proxy.stop
      server.stop
    end

    it "does not drop a live lease as lost, and nobody else gets the lock meanwhile" do
      use_servers(proxy.address)
      lock = MegaMutex::Lock.new("x", ttl: 1) # renewed every 1/3 s
      lock.lock
      proxy.inject("gets", :server_error, message: "SERVER_ERROR out of memory writing get response")
      wait_for(within: 5, message: "renewals to meet SERVER_ERROR") { proxy.fired(:server_error, "gets") >= 2 || lock.lost? }
      proxy.clear
      direct = client_for(server.address)
      expect(direct._acquire(Object.new, key_for("x"), "intruder", 5, 0, 0.01, 0.01)).to be(false)
      expect(lock).not_to be_lost
      expect(lock.unlock).to be(true)
    ensure
      direct&.close
    end
  end

  describe "5: io_timeout bounds each request, and interrupts get through at once" do
    let(:fake) { FakeMemcached.new.start }
    after { fake.stop }

    # A reply long enough to take ~40 s at one byte every 0.2 s.
    def endless_reply(key)
      "VALUE #{key} 0 180 1\r\n#{'t' * 180}\r\nEND\r\n"
    end

    before { fake.on("gets") { |cmd| cmd.trickle(endless_reply(cmd.key), every: 0.2) } }

    it "a trickling reply ends with ConnectionError after io_timeout, not when the trickle ends" do
      use_servers(fake.address, io_timeout: 0.5)
      t0 = monotonic
      expect { MegaMutex.get_current_lock("x") }.to raise_error(MegaMutex::ConnectionError, /timed out/i)
      expect(monotonic - t0).to be < 3 # it used to take 8.4 s for a 40-byte reply
      t0 = monotonic
      expect { MegaMutex.with_distributed_mutex("x", timeout: 0) { :never } }.to raise_error(MegaMutex::ConnectionError)
      expect(monotonic - t0).to be < 3
    end

    it "Thread#raise ends a request in progress promptly" do
      use_servers(fake.address, io_timeout: 30)
      reader = Thread.new do
        Thread.current.report_on_exception = false
        MegaMutex.get_current_lock("x")
      end
      wait_for(message: "the read to be in progress") { fake.count("gets") >= 1 && reader.status == "sleep" }
      raised_at = monotonic
      reader.raise(RuntimeError, "stop")
      wait_for(within: 2, message: "the reader to end") { !reader.alive? } # it used to wait for the whole trickle
      expect(monotonic - raised_at).to be < 2
      expect { reader.value }.to raise_error(RuntimeError, "stop")
    end

    it "Timeout ends a take in progress promptly, and reports the take's outcome as unknown" do
      use_servers(fake.address, io_timeout: 30)
      client = client_for(fake.address, io_ms: 30_000)
      state = Object.new
      t0 = monotonic
      expect { Timeout.timeout(0.3) { client._acquire(state, key_for("x"), "tok", 5, 0, 0.01, 0.01) } }
        .to raise_error(Timeout::Error)
      expect(monotonic - t0).to be < 2
      # The add was sent: it may have landed. The caller must clean up.
      expect(state.instance_variable_get(:@version)).to be_nil
      expect(state.instance_variable_get(:@outcome_unknown)).to be(true)
      fake.reset
      # The connection was given up, not left out of step: the next call works.
      expect(client._read(key_for("x"))).to eq("tok")
    ensure
      client&.close
    end

    it "a stalled reply ends after io_timeout" do
      fake.reset
      fake.on("gets") { |cmd| cmd.stall }
      use_servers(fake.address, io_timeout: 0.3)
      t0 = monotonic
      expect { MegaMutex.get_current_lock("x") }.to raise_error(MegaMutex::ConnectionError, /timed out/i)
      expect(monotonic - t0).to be < 3
    end
  end

  describe "6: a malformed reply is an error, and corrupts nothing" do
    let(:fake) { FakeMemcached.new.start }
    after { fake.stop }

    malformed = {
      "a negative length" => ->(k) { "VALUE #{k} 0 -1 5\r\nabcde\r\nEND\r\n" },
      "a length beyond 64 bits" => ->(k) { "VALUE #{k} 0 99999999999999999999999 5\r\nabcde\r\nEND\r\n" },
      "a length longer than the data" => ->(k) { "VALUE #{k} 0 9 5\r\nabc\r\nEND\r\n" },
      "a length shorter than the data" => ->(k) { "VALUE #{k} 0 2 5\r\nabcde\r\nEND\r\n" },
      "flags that are not a number" => ->(k) { "VALUE #{k} x 3 5\r\nabc\r\nEND\r\n" },
      "another key" => ->(_) { "VALUE other 0 3 5\r\nabc\r\nEND\r\n" },
      "two values for one key" => ->(k) { "VALUE #{k} 0 3 5\r\nabc\r\nVALUE #{k} 0 3 6\r\nabd\r\nEND\r\n" },
      "a bare VALUE" => ->(_) { "VALUE\r\nEND\r\n" },
      "a bare VERSION" => ->(_) { "VERSION\r\n" },
      "an unknown reply" => ->(_) { "HELLO THERE\r\n" },
      "a line without end" => ->(_) { "VALUE #{'x' * 5000}" }
    }.freeze

    malformed.each do |what, reply|
      it "#{what}: ServerError naming the server, and the next call works" do
        fake.on("gets", times: 1) { |cmd| cmd.reply(reply.call(cmd.key)) }
        client = client_for(fake.address)
        key = key_for("x")
        expect { client._read(key) }.to raise_error(MegaMutex::ServerError, /#{fake.port}.*(malformed|unexpected)/i)
        fake.put(key, "tok-a")
        expect(client._read(key)).to eq("tok-a") # a fresh connection, in step
      ensure
        client&.close
      end
    end

    it "bytes sent before they were asked for are never read as the reply to a later request" do
      key = key_for("x")
      forged = "VALUE #{key} 0 6 1\r\nforged\r\nEND\r\n"
      fake.on("gets", times: 1) { |cmd| cmd.reply("END\r\n#{forged}") }
      client = client_for(fake.address)
      expect(client._read(key)).to be_nil
      expect(client._read(key)).to be_nil # not "forged"
      # Within one call (the take reads back "absent", then adds and reads
      # again), they are an error.
      fake.on("gets", times: 1) { |cmd| cmd.reply("END\r\n#{forged}") }
      expect { client._acquire(Object.new, key, "tok-a", 5, 0, 0.01, 0.01) }
        .to raise_error(MegaMutex::ServerError, /unexpected reply .*sent before it was asked for/)
      expect(client._read(key)).to eq("tok-a") # the noreply add landed
      expect(client._extend(key, "tok-a", 5)).to be(true)
      expect(fake.value(key)).to eq("tok-a")
    ensure
      client&.close
    end

    it "a take that reads back a malformed reply raises and runs no block" do
      fake.on("gets") { |cmd| cmd.reply("VALUE #{cmd.key} 0 -1 5\r\nabcde\r\nEND\r\n") }
      use_servers(fake.address)
      ran = false
      expect { MegaMutex.with_distributed_mutex("x", timeout: 0) { ran = true } }.to raise_error(MegaMutex::ServerError)
      expect(ran).to be(false)
    end

    it "a malformed reply to a cas is an error" do
      client = client_for(fake.address)
      key = key_for("x")
      state = Object.new
      expect(client._acquire(state, key, "tok-a", 5, 0, 0.01, 0.01)).to be(true)
      fake.on("cas") { |cmd| cmd.reply("VALUE #{cmd.key} 0 -1 5\r\nabcde\r\nEND\r\n") }
      expect { client._release(key, "tok-a", state.instance_variable_get(:@version)) }
        .to raise_error(MegaMutex::Error, /unexpected|malformed|outcome unknown/i)
    ensure
      client&.close
    end
  end

  describe "11: a release whose reply was lost reports lost only what was lost" do
    let(:server) { MemcachedServer.new.start }
    let(:proxy) { FaultProxy.new(server.port).start }
    after do
      proxy.stop
      server.stop
    end

    it "a cas that reached memcached but whose reply was lost is a release, not a lost lease" do
      use_servers(proxy.address)
      lock = MegaMutex::Lock.new("x")
      lock.lock
      proxy.inject("cas", :drop_and_close, times: 1)
      expect(lock.unlock).to be(true)
      expect(lock).not_to be_lost
      expect(proxy.fired(:drop_and_close, "cas")).to eq(1)
      expect(server.get(key_for("x"))).to be_nil
    end

    it "with_distributed_mutex raises no LockLostError for it" do
      use_servers(proxy.address)
      expect do
        MegaMutex.with_distributed_mutex("x") { proxy.inject("cas", :drop_and_close, times: 1) }
      end.not_to raise_error
      expect(server.get(key_for("x"))).to be_nil
    end

    it "a cas whose outcome is unknown, with the key then held by another token, is lost" do
      fake = FakeMemcached.new.start
      client = client_for(fake.address)
      key = key_for("x")
      state = Object.new
      expect(client._acquire(state, key, "tok-a", 5, 0, 0.01, 0.01)).to be(true)
      fake.on("cas", times: 1) do |cmd|
        cmd.fake.put(key, "tok-b") # expired and taken over meanwhile: the cas never applied
        cmd.close
      end
      expect(client._release(key, "tok-a", state.instance_variable_get(:@version))).to be(false)
      expect(fake.value(key)).to eq("tok-b")
    ensure
      client&.close
      fake&.stop
    end
  end

  describe "connection errors name the server and the cause" do
    it "a missing unix socket: its path and ENOENT, on every call" do
      path = File.join(Dir.tmpdir, "mega_mutex_missing_#{SecureRandom.hex(4)}.sock")
      use_servers(path)
      2.times do
        expect { MegaMutex.with_distributed_mutex("x") { :never } }
          .to raise_error(MegaMutex::ConnectionError, /#{Regexp.escape(path)}.*No such file or directory/)
      end
      expect { MegaMutex.get_current_lock("x") }
        .to raise_error(MegaMutex::ConnectionError, /#{Regexp.escape(path)}.*No such file or directory/)
    end

    it "a unix socket nobody listens on: connection refused" do
      Dir.mktmpdir do |dir|
        path = File.join(dir, "dead.sock")
        UNIXServer.new(path).close # the file stays, nobody listens
        use_servers(path)
        2.times do
          expect { MegaMutex.get_current_lock("x") }
            .to raise_error(MegaMutex::ConnectionError, /#{Regexp.escape(path)}.*Connection refused/)
        end
      end
    end

    it "a TCP port nobody listens on: host, port and connection refused, also while the server is not retried" do
      port = MemcachedServer.free_port
      use_servers("127.0.0.1:#{port}")
      2.times do
        expect { MegaMutex.get_current_lock("x") }
          .to raise_error(MegaMutex::ConnectionError, /127\.0\.0\.1:#{port}.*Connection refused/)
      end
    end
  end
end
