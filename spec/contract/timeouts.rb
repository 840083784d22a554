# frozen_string_literal: true

# Timeouts: 0 tries once, n waits up to n seconds, nil waits until the holder
# lets go. A timeout raises TimeoutError with the original gem's message.
RSpec.shared_examples "contract: timeouts" do
  describe "timeouts" do
    let!(:holder) { hold_elsewhere("busy") }

    after { holder.release if holder.holding? }

    it "timeout 0 tries once: TimeoutError with the original message, the id and the holder; the block never runs" do
      ran = false
      expect { MegaMutex.with_distributed_mutex("busy", timeout: 0) { ran = true } }
        .to raise_error(MegaMutex::TimeoutError, "Failed to obtain a lock within 0 seconds.") { |e|
          expect(e).to be_a(MegaMutex::Error)
          expect(e.id).to eq("busy")
          expect(e.timeout).to eq(0)
          expect(e.holder).to eq(holder.token)
        }
      expect(ran).to be(false)
      expect(MegaMutex::Lock.new("busy").try_lock).to be(false)
      expect { MegaMutex::Lock.new("busy").lock(timeout: 0) }
        .to raise_error(MegaMutex::TimeoutError, "Failed to obtain a lock within 0 seconds.")
      expect(MegaMutex.get_current_lock("busy")).to eq(holder.token)
      expect(MegaMutex::Lock.holds).to be_empty
    end

    it "a timeout that runs out during the first try gives up: it never becomes a wait for ever" do
      # Microseconds: the first try alone takes about that long, so the wait
      # that follows it has no time left (a negative wait means "for ever"
      # to a store that waits in the server).
      200.times do |i|
        timeout = (1 + i % 10) * 1e-6
        expect { Timeout.timeout(5) { MegaMutex::Lock.new("busy").lock(timeout: timeout) } }
          .to raise_error(MegaMutex::TimeoutError)
      end
      expect(MegaMutex.get_current_lock("busy")).to eq(holder.token)
      expect(MegaMutex::Lock.holds).to be_empty
    end

    it "timeout n waits at least n seconds, then raises, having taken nothing" do
      lock = MegaMutex::Lock.new("busy")
      started = monotonic
      expect { lock.synchronize(timeout: 0.2) { :never } }
        .to raise_error(MegaMutex::TimeoutError, "Failed to obtain a lock within 0.2 seconds.") { |e| expect(e.holder).to eq(holder.token) }
      expect(monotonic - started).to be >= 0.2
      started = monotonic
      expect { MegaMutex::Lock.new("busy", timeout: 0.1).lock }.to raise_error(MegaMutex::TimeoutError, /within 0.1 seconds/)
      expect(monotonic - started).to be >= 0.1
      expect(lock).not_to be_owned
      expect(MegaMutex.get_current_lock("busy")).to eq(holder.token)
      expect(MegaMutex::Lock.holds).to be_empty
    end

    it "timeout n takes the lock when the holder lets go within n seconds" do
      waiter = Thread.new { MegaMutex.with_distributed_mutex("busy", timeout: 30) { MegaMutex.get_current_lock("busy") } }
      wait_for(message: "the waiter to wait") { waiter.status == "sleep" }
      holder.release
      expect(value_of(waiter, within: 30)).to be_a(String).and(satisfy { |t| t != holder.token })
    end

    it "uses config.default_timeout when no timeout is given" do
      backend.use(default_timeout: 0.1)
      expect { MegaMutex.with_distributed_mutex("busy") { :never } }
        .to raise_error(MegaMutex::TimeoutError, "Failed to obtain a lock within 0.1 seconds.")
      expect { MegaMutex::Lock.new("busy").lock }.to raise_error(MegaMutex::TimeoutError, /within 0.1 seconds/)
    end

    it "timeout nil (the default) waits until the holder lets go" do
      expect(MegaMutex.configuration.default_timeout).to be_nil
      waiters = [
        Thread.new { MegaMutex.with_distributed_mutex("busy") { :block_form } },
        Thread.new { MegaMutex::Lock.new("busy").synchronize { :lock_object } },
        Thread.new { MegaMutex.with_distributed_mutex("busy", timeout: nil) { :explicit_nil } }
      ]
      wait_for(message: "the waiters to wait") { waiters.all? { |w| w.status == "sleep" } }
      expect(waiters.first.join(0.3)).to be_nil
      expect(waiters).to all(be_alive) # still waiting, nobody gave up
      holder.release
      expect(waiters.map { |w| value_of(w, within: 30) }).to eq(%i[block_form lock_object explicit_nil])
      expect(MegaMutex.get_current_lock("busy")).to be_nil
    end

    it "an explicit timeout nil waits until the holder lets go, whatever default_timeout says" do
      backend.use(default_timeout: 0.05)
      waiter = Thread.new { MegaMutex.with_distributed_mutex("busy", timeout: nil) { :explicit_nil } }
      wait_for(message: "the waiter to wait") { waiter.status == "sleep" }
      expect(waiter.join(0.3)).to be_nil
      holder.release
      expect(value_of(waiter, within: 30)).to eq(:explicit_nil)
    end

    describe "skip if busy (with_distributed_mutex_if_free)" do
      it "returns false without running the block while another thread holds the id, and leaves the holder alone" do
        ran = false
        expect(MegaMutex.with_distributed_mutex_if_free("busy") { ran = true }).to be(false)
        expect(ran).to be(false)
        expect(MegaMutex.get_current_lock("busy")).to eq(holder.token)
        expect(MegaMutex::Lock.holds).to be_empty
      end

      it "runs the block and returns true when the id is free, in a thread that already holds it, or once freed within its timeout" do
        expect(MegaMutex.with_distributed_mutex_if_free("free") { |lock| lock.owned? }).to be(true)
        expect(MegaMutex.get_current_lock("free")).to be_nil
        expect(MegaMutex.with_distributed_mutex("mine") { MegaMutex.with_distributed_mutex_if_free("mine") { :nested } }).to be(true)
        waiter = Thread.new { MegaMutex.with_distributed_mutex_if_free("busy", timeout: 30) { :ran } }
        wait_for(message: "the waiter to wait") { waiter.status == "sleep" }
        holder.release
        expect(value_of(waiter, within: 30)).to be(true)
      end

      it "with a timeout n, waits at least n seconds before saying false" do
        started = monotonic
        expect(MegaMutex.with_distributed_mutex_if_free("busy", timeout: 0.2) { :never }).to be(false)
        expect(monotonic - started).to be >= 0.2
      end

      it "lets a TimeoutError raised inside the block (by another lock) through, and releases" do
        expect do
          MegaMutex.with_distributed_mutex_if_free("outer") { MegaMutex.with_distributed_mutex("busy", timeout: 0) { :never } }
        end.to raise_error(MegaMutex::TimeoutError, "Failed to obtain a lock within 0 seconds.")
        expect(MegaMutex.get_current_lock("outer")).to be_nil
      end
    end
  end
end
