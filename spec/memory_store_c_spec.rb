# frozen_string_literal: true

require "timeout"

# The memory store in C (ext/mega_mutex/store_memory.c, the table's Ruby side
# in memory_glue.c): what is new against the Ruby store it replaces - a wait
# in the store that a release or the waker ends at once, advance and
# renewal, a fork-safe table. The backend's behaviour as a whole is in
# memory_backend_spec.rb and the contract (contract_spec.rb -e memory).
RSpec.describe "the memory store in C" do
  let(:table) { MegaMutex::Native::MemoryTable }
  let(:store) { MegaMutex::MemoryStore }

  def use_memory(**settings)
    MegaMutex.configure do |c|
      c.backend = :memory
      settings.each { |name, value| c.public_send("#{name}=", value) }
    end
  end

  # The table's row for `id`: [key, token, seconds_left, renewals], or nil.
  def row(id)
    store.table.locks.find { |key, *| key == key_for(id) }
  end

  def value_of(thread, within: 10)
    raise "thread still running after #{within}s" unless thread.join(within)

    thread.value
  end

  describe "MemoryTable" do
    it "refuses bad input to advance with ArgumentError naming it, and moves nothing" do
      [-1, -0.001, Float::NAN, Float::INFINITY, Complex(1, 1), "1", nil, :now].each do |bad|
        expect { table.advance(bad) }.to raise_error(ArgumentError, /advance takes a non-negative number of seconds/)
      end
      expect { table.advance(4e9) }.to raise_error(ArgumentError, /at most \d+ seconds \(100 years\)/)
      expect(table.advance(Rational(1, 2))).to be_nil
      expect(table.reset!).to be_nil
      expect(table.locks).to eq([])
    end
  end

  context "behind Native::Client.memory" do
    before do
      use_memory
      store.reset!
    end

    after { store.reset! }

    it "is what the pool hands out for :memory: a native client, one per thread at a time" do
      clients = Queue.new
      Array.new(2) { Thread.new { MegaMutex.pool.with { |c| clients << c; sleep 0.05 } } }.each(&:join)
      a = clients.pop
      b = clients.pop
      expect([a, b]).to all(be_a(MegaMutex::Native::Client))
      expect(a).not_to equal(b)
      expect(a._server_for(key_for("x"))).to eq(["memory", 0])
    end

    it "a release wakes a waiter at once: one blocked for 2 s gets the lock well within 0.5 s of the release" do
      # Backoff set far beyond the bound: a waiter that polled would sleep
      # seconds between tries. The memory store waits in the store instead.
      use_memory(backoff_min: 2.0, backoff_max: 10.0)
      holder = held_elsewhere("wake")
      inside_at = nil
      waiter = Thread.new { MegaMutex.with_distributed_mutex("wake") { inside_at = monotonic } }
      wait_for(message: "waiter to block") { waiter.status == "sleep" }
      blocked = monotonic
      wait_for(within: 10, message: "the waiter to have waited 2 s") { monotonic - blocked > 2 }
      expect(waiter).to be_alive
      released_at = monotonic
      expect(holder.unlock).to be(true)
      value_of(waiter)
      expect(inside_at - released_at).to be < 0.5
    end

    it "Thread#raise ends a wait within 0.5 s, takes nothing and leaves the holder's lock" do
      use_memory(backoff_min: 2.0, backoff_max: 10.0)
      holder = held_elsewhere("raised")
      waiter = Thread.new do
        Thread.current.report_on_exception = false
        MegaMutex.with_distributed_mutex("raised") { :never }
      end
      wait_for(message: "waiter to block") { waiter.status == "sleep" }
      raised_at = monotonic
      waiter.raise(RuntimeError, "stop")
      expect { waiter.join(5) }.to raise_error(RuntimeError, "stop")
      expect(monotonic - raised_at).to be < 0.5
      expect(store.locks).to eq(key_for("raised") => holder.holder)
      expect(holder.unlock).to be(true)
      expect(store.locks).to be_empty
    end

    it "a waiter whose holder's lease runs out takes the lock then, unwoken, without polling" do
      use_memory(backoff_min: 2.0, backoff_max: 10.0)
      client = store.new
      state = Object.new
      expect(client._acquire(state, key_for("ghost"), "ghost:1:0123456789abcdef", 1, 0, 0.01, 0.05)).to be(true)
      started = monotonic
      expect(MegaMutex.with_distributed_mutex("ghost", timeout: 5) { :after_lease }).to eq(:after_lease)
      expect(monotonic - started).to be_between(0.5, 3)
    ensure
      client&.close
    end

    describe "advance and renewal" do
      it "advance ends a lease nobody renews, never one its holder renews" do
        client = store.new
        state = Object.new
        renewed = key_for("renewed")
        ghost = key_for("ghost")
        expect(client._acquire(state, renewed, "kept:1:0123456789abcdef", 1, 0, 0.01, 0.05)).to be(true)
        expect(client._acquire(state, ghost, "ghost:1:0123456789abcdef", 30, 0, 0.01, 0.05)).to be(true)
        expect(client._extend(renewed, "kept:1:0123456789abcdef", 1)).to be(true) # a renewal, as the renewer's
        store.advance(3600)
        expect(client._read(ghost)).to be_nil
        expect(client._read(renewed)).to eq("kept:1:0123456789abcdef")
        expect(row("renewed")[3]).to eq(1)
        expect(client._extend(renewed, "kept:1:0123456789abcdef", 1)).to be(true) # still the holder's to renew
        expect(client._release(renewed, "kept:1:0123456789abcdef", nil)).to be(true)
      ensure
        client&.close
      end

      it "a held lock survives an hour of advance once the renewer has renewed it, and is released normally" do
        lock = MegaMutex::Lock.new("held-for-long", ttl: 1)
        lock.lock
        wait_for(message: "the renewer's first renewal") { row("held-for-long")[3] >= 1 }
        store.advance(3600)
        renewals = row("held-for-long")[3]
        wait_for(message: "a renewal after the jump") { row("held-for-long")[3] > renewals }
        expect(Thread.new { MegaMutex::Lock.new("held-for-long").try_lock }.value).to be(false)
        expect(lock.lost?).to be(false)
        expect(lock.unlock).to be(true)
        expect(store.locks).to be_empty
      end
    end

    describe "fork" do
      it "gives the child its own table: the parent's locks look held there, and nothing crosses over" do
        holder = held_elsewhere("parent")
        token = holder.holder
        reader, writer = IO.pipe
        pid = fork do
          reader.close
          seen = MegaMutex.get_current_lock("parent") == token
          busy = MegaMutex::Lock.new("parent").try_lock
          removed = MegaMutex.pool.with { |c| c._force_release(key_for("parent")) }
          MegaMutex::Lock.new("child").lock
          writer.puts [seen, busy, removed, store.locks.keys.sort].inspect
          writer.close
          exit!(0)
        end
        writer.close
        out = Timeout.timeout(10) { reader.read }
        Process.wait(pid)
        expect(out).to eq([true, false, true, [key_for("child")]].inspect + "\n")
        expect(store.locks).to eq(key_for("parent") => holder.holder)
        expect(holder.unlock).to be(true)
      ensure
        reader&.close
      end

      it "leaves the child a usable table whatever the parent's threads were doing at the fork" do
        stop = false
        busy = Array.new(2) do |i|
          Thread.new do
            until stop
              begin
                MegaMutex.with_distributed_mutex("hot-#{i % 2}", timeout: 0) { nil }
              rescue MegaMutex::TimeoutError
                nil
              end
            end
          end
        end
        waiter_holder = held_elsewhere("awaited")
        waiter = Thread.new { MegaMutex.with_distributed_mutex("awaited") { :woken } }
        wait_for(message: "waiter to block") { waiter.status == "sleep" }
        statuses = Array.new(5) do
          pid = fork do
            # The parent's waiter is not ours: a reset here wakes nobody there.
            store.reset!
            MegaMutex.with_distributed_mutex("in-child", timeout: 1) { nil }
            exit!(store.locks.empty? ? 0 : 1)
          end
          reaper = Thread.new { Process.wait2(pid)[1] }
          next reaper.value if reaper.join(60) # generous: bin/valgrind runs the child too

          begin
            Process.kill(:KILL, pid)
          rescue Errno::ESRCH
            nil # it ended just now
          end
          reaper.value
          :hung
        end
        expect(statuses.map { |s| s == :hung ? s : s.exitstatus }).to all(eq(0))
        expect(waiter).to be_alive
        expect(waiter_holder.unlock).to be(true)
        expect(value_of(waiter)).to eq(:woken)
      ensure
        stop = true
        busy&.each { |t| t.join(5) }
      end
    end
  end
end
