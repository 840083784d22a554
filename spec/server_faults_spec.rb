# frozen_string_literal: true

require "timeout"

RSpec.describe "server faults" do
  let(:server) { MemcachedServer.new.start }

  before do
    MegaMutex.configure do |c|
      c.memcache_servers = [server.address]
      c.io_timeout = 0.5
      c.connect_timeout = 0.5
    end
  end

  after { server.stop }

  it "an unreachable server gives ConnectionError within a few seconds and the block never runs" do
    MegaMutex.configure { |c| c.memcache_servers = ["127.0.0.1:#{MemcachedServer.free_port}"] }
    ran = false
    t0 = monotonic
    expect { MegaMutex.with_distributed_mutex("x") { ran = true } }
      .to raise_error(MegaMutex::ConnectionError, /127\.0\.0\.1:\d+.*(CONNECTION FAILURE|Connection refused)/)
    expect(monotonic - t0).to be < 3
    expect(ran).to be(false)
    expect { MegaMutex.get_current_lock("x") }.to raise_error(MegaMutex::ConnectionError)
    expect(MegaMutex::ConnectionError.ancestors).to include(MegaMutex::Error, StandardError)
  end

  it "a paused server (SIGSTOP) gives ConnectionError within the I/O timeout, never a hang" do
    MegaMutex.with_distributed_mutex("warm") { nil } # an established connection
    server.pause
    ran = false
    t0 = monotonic
    expect { MegaMutex.with_distributed_mutex("x") { ran = true } }.to raise_error(MegaMutex::ConnectionError, /TIMEOUT|timed out/i)
    expect(monotonic - t0).to be < 3
    expect(ran).to be(false)
  ensure
    server.resume
  end

  it "a take that timed out against a paused server leaves no lock behind once the server resumes" do
    MegaMutex.with_distributed_mutex("warm") { nil }
    server.pause
    expect { MegaMutex.with_distributed_mutex("ghost", timeout: 0) { :never } }.to raise_error(MegaMutex::ConnectionError)
    server.resume
    # The queued add lands on resume, for a token nobody holds; the renewer
    # removes it long before its 32 s lease would run out.
    expect(MegaMutex.with_distributed_mutex("ghost", timeout: 5) { :free }).to eq(:free)
  end

  it "works again once a stopped server comes back, without restarting Ruby" do
    MegaMutex.with_distributed_mutex("x") { nil }
    port = server.port
    server.stop
    expect { MegaMutex.with_distributed_mutex("x") { nil } }.to raise_error(MegaMutex::ConnectionError)
    MemcachedServer.new(port: port).start
    result = wait_for(within: 10, every: 0.1, message: "locking to work again") do
      MegaMutex.with_distributed_mutex("x", timeout: 1) { :back }
    rescue MegaMutex::ConnectionError
      nil
    end
    expect(result).to eq(:back)
  end

  it "a restarted server (all items lost) is used again at the first call" do
    MegaMutex.with_distributed_mutex("x") { nil }
    server.restart
    expect(MegaMutex.with_distributed_mutex("x") { :fresh_connection }).to eq(:fresh_connection)
  end

  it "a holder whose lock was lost to a restart never releases the new holder's lock (CAS restarts from 0)" do
    a = MegaMutex::Lock.new("x")
    a.lock # the first store on a fresh server
    server.restart
    b = held_elsewhere("x") # the first store again: the same CAS value as a's
    expect(a.unlock).to be(false)
    expect(a).to be_lost
    expect(MegaMutex.get_current_lock("x")).to eq(b.holder)
    expect(Thread.new { MegaMutex::Lock.new("x").try_lock }.value).to be(false)
    expect(b.unlock).to be(true)
  end

  it "an error while releasing after a failing block does not hide the block's exception" do
    error = Class.new(StandardError)
    expect do
      MegaMutex.with_distributed_mutex("x") do
        server.stop
        raise error, "the block's own"
      end
    end.to raise_error(error, "the block's own")
  end

  it "an error while releasing after a good block is raised" do
    expect { MegaMutex.with_distributed_mutex("x") { server.stop } }.to raise_error(MegaMutex::ConnectionError)
  end

  context "with CAS disabled on the server (memcached -C)" do
    let(:server) { MemcachedServer.new(args: ["-C"]).start }

    it "refuses with ServerError instead of releasing unsafely, and never runs the block" do
      ran = false
      expect { MegaMutex.with_distributed_mutex("x") { ran = true } }.to raise_error(MegaMutex::ServerError, /CAS/)
      expect(ran).to be(false)
      expect(server.get(key_for("x"))).to be_nil # not left behind
    end
  end

  context "with a full server that refuses stores (memcached -M)" do
    let(:server) { MemcachedServer.new(args: %w[-M -m 2]).start }

    it "reports ServerError instead of spinning on a lock nobody holds" do
      fill = TCPSocket.new("127.0.0.1", server.port)
      loop do # fill the slab class a lock item lands in
        fill.write("set #{@namespace}:filler#{rand(1 << 40)} 0 0 24\r\n#{'x' * 24}\r\n")
        break unless fill.gets.start_with?("STORED")
      end
      expect { Timeout.timeout(10) { MegaMutex.with_distributed_mutex("x" * 20) { :never } } }
        .to raise_error(MegaMutex::ServerError, /ALLOCATE|out of memory/i)
    ensure
      fill&.close
    end
  end

  context "when a server answers garbage" do
    it "raises a MegaMutex::Error, not a crash or a hang" do
      garbage = TCPServer.new("127.0.0.1", 0)
      acceptor = Thread.new do
        loop do
          client = garbage.accept
          Thread.new(client) do |c|
            c.readpartial(4096)
            c.write("HELLO THERE\r\nVALUE x\r\n")
          rescue IOError, SystemCallError
            nil
          end
        end
      end
      MegaMutex.configure { |c| c.memcache_servers = ["127.0.0.1:#{garbage.addr[1]}"] }
      expect { Timeout.timeout(10) { MegaMutex.with_distributed_mutex("x") { :never } } }.to raise_error(MegaMutex::Error)
    ensure
      acceptor&.kill
      garbage&.close
    end
  end
end
