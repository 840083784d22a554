# frozen_string_literal: true

require "timeout"

# Interrupts leak nothing: Timeout, Thread#raise and Thread#kill end a wait
# and take nothing; an interrupt at any point inside Lock#lock or
# Lock#try_lock leaves nothing held; a deferred interrupt is honoured.
# "Nothing held" is checked in three places: the store (get_current_lock),
# the thread's reentrancy registry (Lock.holds) and the Lock (owned?).
RSpec.shared_examples "contract: interrupts" do
  describe "interrupts" do
    describe "during a wait" do
      let!(:holder) { hold_elsewhere("held") }

      after { holder.release if holder.holding? }

      # The waiter's thread ran `call` and was cut short: nothing of it is left.
      def expect_nothing_left(thread, lock = nil)
        expect(MegaMutex.get_current_lock("held")).to eq(holder.token)
        expect(MegaMutex::Lock.holds(thread)).to be_empty
        expect(lock).not_to be_owned if lock
        holder.release
        expect(MegaMutex.get_current_lock("held")).to be_nil # the waiter's take did not land after all
        expect(MegaMutex.with_distributed_mutex("held", timeout: 0) { :free }).to eq(:free)
      end

      it "Timeout ends with_distributed_mutex's wait; the block never runs" do
        ran = false
        expect { Timeout.timeout(0.2) { MegaMutex.with_distributed_mutex("held") { ran = true } } }.to raise_error(Timeout::Error)
        expect(ran).to be(false)
        expect_nothing_left(Thread.current)
      end

      it "Timeout ends Lock#lock's wait" do
        lock = MegaMutex::Lock.new("held")
        expect { Timeout.timeout(0.2) { lock.lock } }.to raise_error(Timeout::Error)
        expect_nothing_left(Thread.current, lock)
      end

      it "Thread#raise ends with_distributed_mutex's wait promptly" do
        ran = false
        waiter = Thread.new do
          Thread.current.report_on_exception = false
          MegaMutex.with_distributed_mutex("held") { ran = true }
        end
        wait_for(message: "the waiter to wait") { waiter.status == "sleep" }
        waiter.raise(RuntimeError, "stop waiting")
        expect { value_of(waiter, within: 5) }.to raise_error(RuntimeError, "stop waiting")
        expect(ran).to be(false)
        expect_nothing_left(waiter)
      end

      it "Thread#raise ends Lock#lock's wait promptly" do
        lock = MegaMutex::Lock.new("held")
        waiter = Thread.new do
          Thread.current.report_on_exception = false
          lock.lock
        end
        wait_for(message: "the waiter to wait") { waiter.status == "sleep" }
        waiter.raise(RuntimeError, "stop waiting")
        expect { value_of(waiter, within: 5) }.to raise_error(RuntimeError, "stop waiting")
        expect_nothing_left(waiter, lock)
      end

      it "Thread#kill ends a wait promptly" do
        waiter = Thread.new { MegaMutex.with_distributed_mutex("held") { :never } }
        wait_for(message: "the waiter to wait") { waiter.status == "sleep" }
        waiter.kill
        expect(waiter.join(5)).to be(waiter)
        expect_nothing_left(waiter)
      end

      it "a Thread#raise deferred with handle_interrupt(:never) lets the wait go on, and arrives after the block, which released" do
        waiter = Thread.new do
          Thread.current.report_on_exception = false
          Thread.handle_interrupt(Object => :never) do
            MegaMutex.with_distributed_mutex("held") { :got_it }
          end
        end
        wait_for(message: "the waiter to wait") { waiter.status == "sleep" }
        waiter.raise(RuntimeError, "deferred")
        expect(waiter.join(0.3)).to be_nil # still waiting
        holder.release
        expect { value_of(waiter, within: 30) }.to raise_error(RuntimeError, "deferred")
        expect(MegaMutex.get_current_lock("held")).to be_nil
      end
    end

    describe "at every point of a call" do
      include InterruptPoints

      it "Lock#lock: an interrupt at any point inside the call leaves nothing held" do
        inside, leaked = every_point(:lock, "every-lock") { expect(MegaMutex::Lock.holds).to be_empty }
        expect(inside.size).to be > 10
        expect(leaked).to eq([])
      end

      it "Lock#try_lock: an interrupt at any point inside the call leaves nothing held" do
        inside, leaked = every_point(:try_lock, "every-try") { expect(MegaMutex::Lock.holds).to be_empty }
        expect(inside.size).to be > 10
        expect(leaked).to eq([])
      end

      it "Lock#synchronize (with_distributed_mutex): an interrupt at any point leaves nothing held" do
        inside, leaked = every_point(:synchronize, "every-sync") { expect(MegaMutex::Lock.holds).to be_empty }
        expect(inside.size).to be > 10
        expect(leaked).to eq([])
      end

      it "an interrupt at any point inside a nested Lock#lock keeps the outer hold" do
        outer = MegaMutex::Lock.new("nested").tap(&:lock)
        token = outer.holder
        interrupter = InterruptPoints::Interrupter.new(Thread.current)
        points = 0
        (1..).each do |k|
          fired, = interrupted_call(MegaMutex::Lock.new("nested"), :lock, k, interrupter)
          break unless fired

          points += 1
          expect(outer).to be_owned
          expect(MegaMutex.get_current_lock("nested")).to eq(token)
        end
        expect(points).to be > 3
      ensure
        interrupter&.stop
        expect(outer.unlock).to be(true)
        expect(MegaMutex.get_current_lock("nested")).to be_nil
      end
    end

    it "an interrupt that lands while MegaMutex is logging is delivered, never swallowed with a logger's error" do
      # In the taker's thread the logger is busy until an interrupt is
      # pending: then it returns.
      in_logger = Queue.new
      logger = Object.new
      %i[debug info warn error].each do |level|
        logger.define_singleton_method(level) do |*args, &block|
          if Thread.current[:busy_logger]
            in_logger << level
            sleep 0.001 until Thread.pending_interrupt?
          end
          block&.call || args.first
        end
      end
      backend.use(logger: logger)
      holder = hold_elsewhere("logged")
      taker = Thread.new do
        Thread.current.report_on_exception = false
        Thread.current[:busy_logger] = true
        MegaMutex::Lock.new("logged").lock(timeout: 0) # fails, and logs that at debug level
      end
      in_logger.pop
      taker.raise(RuntimeError, "interrupted while logging")
      expect { value_of(taker) }.to raise_error(RuntimeError, "interrupted while logging")
      holder.release
    end

    it "a Timeout firing inside the block releases the lock" do
      expect { Timeout.timeout(0.05) { MegaMutex.with_distributed_mutex("slow") { sleep 5 } } }.to raise_error(Timeout::Error)
      expect(MegaMutex.get_current_lock("slow")).to be_nil
      expect(MegaMutex::Lock.holds).to be_empty
    end
  end
end
