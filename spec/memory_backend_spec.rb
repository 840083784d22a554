# frozen_string_literal: true

require "logger"
require "socket"
require "stringio"
require "timeout"

# The :memory backend (lib/mega_mutex/memory_store.rb). No example here talks
# to memcached: memcache_servers points at a port where nothing listens, and
# every native client opened for it is recorded and must not exist.
RSpec.describe "backend :memory" do
  let(:store) { MegaMutex::MemoryStore }
  let(:dead_port) { MemcachedServer.free_port } # bound, then closed: nothing listens
  let(:dead_server) { ["127.0.0.1", dead_port] }

  def use_memory(**settings)
    MegaMutex.configure do |c|
      c.backend = :memory
      c.memcache_servers = ["127.0.0.1:#{dead_port}"]
      settings.each { |name, value| c.public_send("#{name}=", value) }
    end
  end

  # What the store fills in, as it fills Lock::Hold: instance variables.
  class AcquireState
    attr_reader :version, :attempts, :waited, :holder
  end

  def state
    AcquireState.new
  end

  # The thread's value, failing (instead of hanging) if it has not finished
  # within `within` seconds.
  def value_of(thread, within: 10)
    raise "thread still running after #{within}s" unless thread.join(within)

    thread.value
  end

  before do
    @opened = []
    allow(MegaMutex::Native::Client).to receive(:new).and_wrap_original do |original, servers, *rest|
      @opened << servers
      original.call(servers, *rest)
    end
    use_memory
    store.reset!
  end

  after do
    expect(@opened).not_to include([dead_server])
    store.reset!
  end

  describe "no memcached" do
    it "locks with nothing listening on memcache_servers, where the memcached backend fails at once" do
      MegaMutex.configure { |c| c.backend = :memcached }
      expect { MegaMutex.with_distributed_mutex("nowhere") { :ran } }.to raise_error(MegaMutex::ConnectionError)
      expect(@opened).to include([dead_server]) # the spy sees a connection attempt
      @opened.clear

      use_memory
      inside = MegaMutex.with_distributed_mutex("nowhere") { MegaMutex.get_current_lock("nowhere") }
      expect(inside).to be_a(String)
      expect(MegaMutex.get_current_lock("nowhere")).to be_nil
      expect(MegaMutex::Lock.new("nowhere").locked?).to be(false)
    end

    it "never connects: a listener standing in for memcached sees no connection (and does see the memcached backend's)" do
      listener = TCPServer.new("127.0.0.1", 0)
      port = listener.addr[1]
      MegaMutex.configure { |c| c.backend = :memory; c.memcache_servers = ["127.0.0.1:#{port}"] }
      holder = held_elsewhere("probe")
      expect(MegaMutex::Lock.new("probe").try_lock).to be(false)
      expect(MegaMutex.get_current_lock("probe")).to eq(holder.holder)
      expect(holder.unlock).to be(true)
      expect(MegaMutex.with_distributed_mutex("probe", timeout: 0) { :ok }).to eq(:ok)
      expect { listener.accept_nonblock }.to raise_error(IO::WaitReadable)

      # Control: the same probe notices the memcached backend connecting.
      MegaMutex.configure { |c| c.backend = :memcached; c.io_timeout = 0.2 }
      asker = Thread.new do
        MegaMutex.get_current_lock("probe")
      rescue MegaMutex::ConnectionError
        :no_answer
      end
      expect(IO.select([listener], nil, nil, 5)).not_to be_nil
      listener.accept.close
      expect(asker.value).to eq(:no_answer)
    ensure
      listener&.close
    end

    it "works in a process with no memcached at all" do
      script = <<~'RUBY'
        MegaMutex.configure { |c| c.backend = :memory }
        held = Queue.new
        go = Queue.new
        t = Thread.new { MegaMutex.with_distributed_mutex("solo") { held << 1; go.pop } }
        held.pop
        begin
          MegaMutex.with_distributed_mutex("solo", timeout: 0) { puts "OVERLAP" }
        rescue MegaMutex::TimeoutError => e
          puts e.message
        end
        go << 1
        t.join
        puts MegaMutex.with_distributed_mutex("solo", timeout: 0) { "TAKEN" }
      RUBY
      out, err, status = run_ruby(script, env: { "MEMCACHE_SERVERS" => "127.0.0.1:#{dead_port}" })
      expect(status).to be_success, err
      expect(out).to eq("Failed to obtain a lock within 0 seconds.\nTAKEN\n")
    end

    it "has no server: every key is kept in \"memory\"" do
      expect(MegaMutex.pool.with { |c| c._server_for(key_for("x")) }).to eq(["memory", 0])
    end

    it "hands out native clients of the memory store" do
      expect(MegaMutex.pool.with(&:itself)).to be_a(MegaMutex::Native::Client)
      expect(store.new).to be_a(MegaMutex::Native::Client)
    end

    it "checks its arguments as the native client does, and refuses work once closed" do
      s = store.new
      expect { s._acquire(state, "has space", "t", 5, 0, 0.01, 0.02) }.to raise_error(ArgumentError, /key/)
      expect { s._acquire(state, "k", "t" * 201, 5, 0, 0.01, 0.02) }.to raise_error(ArgumentError, /token/)
      expect { s._acquire(state, "k", "t", 0, 0, 0.01, 0.02) }.to raise_error(ArgumentError, /ttl/)
      expect { s._acquire(state, "k", "t", 5, -1, 0.01, 0.02) }.to raise_error(ArgumentError, /timeout/)
      expect { s._acquire(state, "k", "t", 5, 0, 0.02, 0.01) }.to raise_error(ArgumentError, /backoff/)
      expect { s._read(nil) }.to raise_error(TypeError)
      expect(s.closed?).to be(false)
      s.close
      expect(s.closed?).to be(true)
      expect { s._read("k") }.to raise_error(MegaMutex::Error, /closed/)
      expect(store.locks).to be_empty
    end
  end

  describe "mutual exclusion" do
    it "makes other threads wait, and hands the lock over at release" do
      entered = Queue.new
      leave = Queue.new
      first = Thread.new { MegaMutex.with_distributed_mutex("one") { entered << :first; leave.pop } }
      expect(entered.pop).to eq(:first)
      expect(Thread.new { MegaMutex::Lock.new("one").try_lock }.value).to be(false)
      second = Thread.new { MegaMutex.with_distributed_mutex("one") { entered << :second } }
      wait_for(message: "second thread to wait") { second.status == "sleep" }
      expect(entered).to be_empty
      leave << :go
      value_of(first)
      value_of(second)
      expect(entered.pop).to eq(:second)
      expect(MegaMutex.get_current_lock("one")).to be_nil
    end

    it "lets one thread at a time into a section (8 threads x 50)" do
      inside = 0
      most = 0
      count = 0
      threads = Array.new(8) do
        Thread.new do
          50.times do
            MegaMutex.with_distributed_mutex("counter") do
              inside += 1
              most = inside if inside > most
              value = count
              Thread.pass
              count = value + 1
              inside -= 1
            end
          end
        end
      end
      threads.each(&:join)
      expect(most).to eq(1)
      expect(count).to eq(400)
    end

    it "keeps different ids independent" do
      holder = held_elsewhere("a")
      expect(MegaMutex.with_distributed_mutex("b", timeout: 0) { :b }).to eq(:b)
      holder.unlock
    end

    it "is reentrant in a thread; other threads wait for the outermost block" do
      results = MegaMutex.with_distributed_mutex(:nested) do
        inner = MegaMutex.with_distributed_mutex("nested", timeout: 0) { MegaMutex.get_current_lock("nested") }
        [inner, Thread.new { MegaMutex::Lock.new("nested").try_lock }.value, MegaMutex.get_current_lock("nested")]
      end
      expect(results[0]).to eq(results[2])
      expect(results[1]).to be(false)
      expect(MegaMutex.get_current_lock("nested")).to be_nil
    end

    it "answers locked?, holder, owned? and get_current_lock" do
      lock = MegaMutex::Lock.new("asked")
      expect([lock.locked?, lock.holder, lock.owned?]).to eq([false, nil, false])
      expect(lock.try_lock).to be(true)
      other = MegaMutex::Lock.new("asked")
      expect(other.locked?).to be(true)
      expect(other.holder).to eq(MegaMutex.get_current_lock("asked"))
      expect(other.holder).to match(/\A[\x21-\x7e]+:#{Process.pid}:\h{16}\z/)
      expect([lock.owned?, other.owned?]).to eq([true, false])
      expect(store.locks).to eq(key_for("asked") => other.holder)
      expect(Thread.new { lock.unlock }.value).to be(true) # unlock from another thread
      expect([other.locked?, other.holder, MegaMutex.get_current_lock("asked")]).to eq([false, nil, nil])
    end
  end

  describe "timeouts" do
    let!(:holder) { held_elsewhere("busy") }

    after { holder.unlock if holder.owned? }

    it "timeout 0 tries once and raises the original message with the holder" do
      ran = false
      expect { MegaMutex.with_distributed_mutex("busy", timeout: 0) { ran = true } }
        .to raise_error(MegaMutex::TimeoutError, "Failed to obtain a lock within 0 seconds.") { |e|
          expect(e.holder).to eq(holder.holder)
          expect(e.id).to eq("busy")
        }
      expect(ran).to be(false)
      expect(MegaMutex::Lock.new("busy").try_lock).to be(false)
    end

    it "a finite timeout gives up, takes nothing and leaves the holder's lock" do
      expect { MegaMutex.with_distributed_mutex("busy", timeout: 0.1) { :never } }
        .to raise_error(MegaMutex::TimeoutError, /within 0.1 seconds/) { |e| expect(e.holder).to eq(holder.holder) }
      expect { MegaMutex::Lock.new("busy", timeout: 0.05).lock }.to raise_error(MegaMutex::TimeoutError)
      expect(MegaMutex.get_current_lock("busy")).to eq(holder.holder)
      expect(MegaMutex::Lock.holds).to be_empty
    end

    it "nil (the default) waits for ever, until the holder releases" do
      expect(MegaMutex.configuration.default_timeout).to be_nil
      waiter = Thread.new { MegaMutex.with_distributed_mutex("busy") { :finally } }
      wait_for(message: "waiter to block") { waiter.status == "sleep" }
      expect(waiter).to be_alive
      holder.unlock
      expect(value_of(waiter)).to eq(:finally)
    end

    it "waiters sleep until woken instead of polling" do
      # Straight at the store, with 1 microsecond backoff: a poller would try
      # thousands of times while the lock stays held.
      s = state
      waiter = Thread.new do
        MegaMutex.pool.with { |c| c._acquire(s, key_for("busy"), "waiter:1:feedfacefeedface", 5, nil, 0.000001, 0.000001) }
      end
      wait_for(message: "waiter to block") { waiter.status == "sleep" }
      started = monotonic
      wait_for(message: "a fifth of a second to pass") { monotonic - started > 0.2 }
      expect(waiter).to be_alive
      holder.unlock
      expect(value_of(waiter)).to be(true)
      expect(s.attempts).to be_between(2, 3)
      expect(s.waited).to be > 0.2
      expect(MegaMutex.get_current_lock("busy")).to eq("waiter:1:feedfacefeedface")
      expect(MegaMutex.pool.with { |c| c._release(key_for("busy"), "waiter:1:feedfacefeedface", s.version) }).to be(true)
    end
  end

  describe "leases" do
    def take_as_ghost(id, ttl)
      # A holder that never renews: taken straight in the store, as by a
      # process that then crashed.
      s = state
      taken = MegaMutex.pool.with { |c| c._acquire(s, key_for(id), "ghost:1:0123456789abcdef", ttl, 0, 0.01, 0.05) }
      expect(taken).to be(true)
      expect(s.version).not_to be_nil
    end

    it "a lock nobody renews frees itself after its lease, and a waiter takes it" do
      take_as_ghost("crashed", 1)
      expect(MegaMutex.get_current_lock("crashed")).to eq("ghost:1:0123456789abcdef")
      mine = MegaMutex.with_distributed_mutex("crashed", timeout: 10) { MegaMutex.get_current_lock("crashed") }
      expect(mine).not_to eq("ghost:1:0123456789abcdef")
      expect(mine).to include(":#{Process.pid}:")
    end

    it "advance ends leases without sleeping" do
      take_as_ghost("frozen", 30)
      expect(MegaMutex::Lock.new("frozen").try_lock).to be(false)
      store.advance(29)
      expect(MegaMutex::Lock.new("frozen").try_lock).to be(false)
      store.advance(2)
      lock = MegaMutex::Lock.new("frozen")
      expect(lock.try_lock).to be(true)
      lock.unlock
      expect { store.advance(-1) }.to raise_error(ArgumentError, /advance/)
      expect { store.advance(Float::NAN) }.to raise_error(ArgumentError, /advance/)
    end

    it "advance wakes a waiter whose holder's lease it ends" do
      take_as_ghost("stuck", 600)
      waiter = Thread.new { MegaMutex.with_distributed_mutex("stuck") { :after_lease } }
      wait_for(message: "waiter to block") { waiter.status == "sleep" }
      store.advance(601)
      expect(value_of(waiter)).to eq(:after_lease)
    end

    it "advance never ends a lease its holder is renewing" do
      renewals = -> { store.table.locks.to_h { |key, _token, _left, count| [key, count] }[key_for("kept")] }
      holder = held_elsewhere("kept", ttl: 1) # renewed every 1/3 s
      wait_for(within: 3, message: "the first renewal") { renewals.call.to_i >= 1 }
      store.advance(3600)
      seen = renewals.call
      wait_for(within: 3, message: "a renewal after the jump") { renewals.call.to_i > seen }
      expect(Thread.new { MegaMutex::Lock.new("kept").try_lock }.value).to be(false)
      expect(holder.lost?).to be(false)
      expect(holder.unlock).to be(true)
    end

    it "a lease lost while the block runs raises LockLostError after it, and someone else may take it meanwhile" do
      taken_over = nil
      expect do
        MegaMutex.with_distributed_mutex("lost", ttl: 5) do
          store.advance(10)
          taken_over = Thread.new { MegaMutex::Lock.new("lost").tap(&:try_lock) }.value
          :block_finished
        end
      end.to raise_error(MegaMutex::LockLostError) { |e|
        expect(e.id).to eq("lost")
        expect(e.reason).to match(/gone or held by someone else/)
      }
      expect(taken_over.owned?).to be(true)
      expect(MegaMutex.get_current_lock("lost")).to eq(taken_over.holder)
      expect(taken_over.unlock).to be(true)
    end

    it "the renewer finds a lost lease while it is held; on_lock_lost :log only logs" do
      out = StringIO.new
      use_memory(on_lock_lost: :log, logger: Logger.new(out))
      lock = MegaMutex::Lock.new("lost-too", ttl: 3) # advanced before its first renewal (at 1 s)
      lock.lock
      store.advance(10)
      wait_for(message: "renewer to find the lease gone") { lock.lost? }
      expect(out.string).to match(/lost lock \S*lost-too/)
      expect(lock.unlock).to be(false)
      expect(MegaMutex.with_distributed_mutex("lost-too", ttl: 1) { store.advance(10); :logged_only }).to eq(:logged_only)
    end
  end

  describe "interrupts" do
    let!(:holder) { held_elsewhere("held") }

    after { holder.unlock if holder.owned? }

    it "Thread#raise ends a wait; the block never runs and nothing is left held" do
      ran = false
      waiter = Thread.new do
        Thread.current.report_on_exception = false
        MegaMutex.with_distributed_mutex("held") { ran = true }
      end
      wait_for(message: "waiter to block") { waiter.status == "sleep" }
      waiter.raise(RuntimeError, "stop waiting")
      expect { waiter.join(5) }.to raise_error(RuntimeError, "stop waiting")
      expect(ran).to be(false)
      holder.unlock
      expect(MegaMutex.get_current_lock("held")).to be_nil
      expect(store.locks).to be_empty
    end

    it "Timeout ends a wait, and one firing inside the block releases the lock" do
      expect { Timeout.timeout(0.1) { MegaMutex.with_distributed_mutex("held") { :never } } }.to raise_error(Timeout::Error)
      expect(MegaMutex.get_current_lock("held")).to eq(holder.holder)
      expect { Timeout.timeout(0.05) { MegaMutex.with_distributed_mutex("slow") { sleep 5 } } }.to raise_error(Timeout::Error)
      expect(MegaMutex.get_current_lock("slow")).to be_nil
      expect(MegaMutex::Lock.holds).to be_empty
    end

    it "a Thread#raise deferred by handle_interrupt(:never) waits, and is delivered after the block, with the lock released" do
      waiter = Thread.new do
        Thread.current.report_on_exception = false
        Thread.handle_interrupt(Object => :never) { MegaMutex.with_distributed_mutex("held") { :got_it } }
      end
      wait_for(message: "waiter to block") { waiter.status == "sleep" }
      waiter.raise(RuntimeError, "deferred")
      expect(waiter).to be_alive
      holder.unlock
      expect { waiter.join(5) }.to raise_error(RuntimeError, "deferred")
      expect(MegaMutex.get_current_lock("held")).to be_nil
    end

    it "two thousand Thread#raise at random moments (waiting, taking, inside) leave no lock behind" do
      delivered = Queue.new
      ready = Queue.new
      landed = Hash.new(0)
      worker = Thread.new do
        # Interrupts are let in only around with_distributed_mutex, so each
        # one lands in a wait, a take, the block or a release: never in here.
        Thread.handle_interrupt(RuntimeError => :never) do
          ready << true # no storm before this thread is inside the mask
          (1..).each do |i|
            id = i % 3 == 2 ? "held" : "free-#{i % 2}"
            stage = :waiting_or_taking
            begin
              Thread.handle_interrupt(RuntimeError => :immediate) do
                MegaMutex.with_distributed_mutex(id, timeout: id == "held" ? 0.001 : nil) do
                  stage = :inside
                  sleep 0.00005
                end
              end
            rescue MegaMutex::TimeoutError
              nil
            rescue RuntimeError => e
              break if e.message == "stop"

              landed[stage] += 1
              delivered << stage
            end
          end
        end
      end
      rng = Random.new(42)
      ready.pop
      2000.times do
        sleep(rng.rand * 0.0002)
        worker.raise(RuntimeError, "storm")
        delivered.pop
      end
      worker.raise(RuntimeError, "stop")
      expect(worker.join(5)).not_to be_nil
      expect(landed.values.sum).to eq(2000)
      expect(landed[:waiting_or_taking]).to be > 20
      expect(landed[:inside]).to be > 20
      expect(MegaMutex::Lock.holds(worker)).to be_empty
      # A release that failed is the clean-up's (within a second or so): once
      # it has had its turn, only the holder's lock is left.
      wait_for(within: 3, message: "only the holder's lock to be left, not #{store.locks.inspect}") do
        store.locks == { key_for("held") => holder.holder }
      end
    end
  end

  describe "the table" do
    it "is shared by every :memory configuration: re-configuring keeps held locks" do
      holder = held_elsewhere("kept")
      use_memory(lock_ttl: 7)
      expect(Thread.new { MegaMutex::Lock.new("kept").try_lock }.value).to be(false)
      MegaMutex.reset_configuration!
      use_memory(namespace: @namespace)
      expect(MegaMutex.get_current_lock("kept")).to eq(holder.holder)
      expect(holder.unlock).to be(true)
    end

    it "reset! forgets every lock and wakes the waiters" do
      holder = held_elsewhere("cleared")
      waiter = Thread.new { MegaMutex.with_distributed_mutex("cleared") { :after_reset } }
      wait_for(message: "waiter to block") { waiter.status == "sleep" }
      store.reset!
      expect(value_of(waiter)).to eq(:after_reset)
      expect(store.locks).to be_empty
      expect(holder.unlock).to be(false) # as after a memcached restart
      expect(holder.lost?).to be(true)
    end

    it "is the child's own copy after fork" do
      holder = held_elsewhere("parent")
      reader, writer = IO.pipe
      pid = fork do
        reader.close
        seen = MegaMutex.get_current_lock("parent")
        busy = begin
          MegaMutex.with_distributed_mutex("parent", timeout: 0) { "taken" }
        rescue MegaMutex::TimeoutError
          "busy"
        end
        child_lock = MegaMutex::Lock.new("child")
        child_lock.lock
        writer.puts [seen == holder.holder, busy].inspect
        writer.close
        exit!(0)
      end
      writer.close
      out = Timeout.timeout(10) { reader.read }
      Process.wait(pid)
      expect(out).to eq("[true, \"busy\"]\n")
      expect(MegaMutex.get_current_lock("child")).to be_nil
      expect(holder.unlock).to be(true)
    ensure
      reader&.close
    end
  end
end
