# frozen_string_literal: true

RSpec.describe MegaMutex do
  let(:widget_maker) do
    Class.new do
      include MegaMutex
      def ensure_just_enough_things(id = "WidgetMaker Mutex ID", &block)
        with_distributed_mutex(id, &block)
      end
    end.new
  end

  describe "#with_distributed_mutex" do
    it "returns the block's value" do
      expect(widget_maker.ensure_just_enough_things { :made }).to eq(:made)
    end

    it "holds the lock in memcached while the block runs, and frees it after" do
      inside = widget_maker.ensure_just_enough_things("w") { memcached.get(key_for("w")) }
      expect(inside).to match(/\A\S+:#{Process.pid}:\h{16}\z/)
      expect(memcached.get(key_for("w"))).to be_nil
    end

    it "accepts the original call forms for options" do
      forms = [
        -> { widget_maker.with_distributed_mutex("f", timeout: 1) { 1 } },
        -> { widget_maker.with_distributed_mutex("f", :timeout => 1) { 2 } }, # rubocop:disable Style/HashSyntax
        -> { widget_maker.with_distributed_mutex("f", { timeout: 1 }) { 3 } }, # rubocop:disable Style/BracesAroundHashParameters
        -> { widget_maker.with_distributed_mutex("f", {}) { 4 } }
      ]
      expect(forms.map(&:call)).to eq([1, 2, 3, 4])
    end

    it "passes the timeout through the original positional-hash form" do
      other = held_elsewhere("held")
      t0 = monotonic
      expect { widget_maker.with_distributed_mutex("held", { timeout: 0.2 }) { :never } }
        .to raise_error(MegaMutex::TimeoutError, "Failed to obtain a lock within 0.2 seconds.")
      expect(monotonic - t0).to be >= 0.2
    ensure
      other.unlock
    end

    it "is also available as with_cross_process_mutex and as a module function" do
      expect(widget_maker.with_cross_process_mutex("a") { :alias }).to eq(:alias)
      expect(MegaMutex.with_distributed_mutex("a") { :module }).to eq(:module)
      expect(MegaMutex.with_cross_process_mutex("a") { :module_alias }).to eq(:module_alias)
    end

    it "works with a zero-argument lambda, as the original gem's users pass" do
      strict = -> { :lambda_ran }
      expect(widget_maker.with_distributed_mutex("l", &strict)).to eq(:lambda_ran)
    end

    it "yields the lock to a block that takes it" do
      widget_maker.with_distributed_mutex("y") do |lock|
        expect(lock).to be_a(MegaMutex::Lock)
        expect(lock).to be_owned
      end
    end

    it "propagates an exception from the block and releases the lock" do
      error = Class.new(StandardError)
      expect { widget_maker.with_distributed_mutex("boom") { raise error, "inside" } }.to raise_error(error, "inside")
      expect(MegaMutex.get_current_lock("boom")).to be_nil
      expect(widget_maker.with_distributed_mutex("boom", timeout: 0) { :free_again }).to eq(:free_again)
    end

    it "releases the lock when the block exits with throw, break or next" do
      expect(catch(:out) { widget_maker.with_distributed_mutex("t") { throw :out, :thrown } }).to eq(:thrown)
      expect(widget_maker.with_distributed_mutex("t") { break :broken }).to eq(:broken)
      expect([1, 2].map { |i| widget_maker.with_distributed_mutex("t") { next i * 10 } }).to eq([10, 20])
      expect(MegaMutex.get_current_lock("t")).to be_nil
    end

    it "requires a block" do
      expect { widget_maker.with_distributed_mutex("x") }.to raise_error(ArgumentError, /needs a block/)
    end

    it "rejects unknown options, naming them" do
      expect { widget_maker.with_distributed_mutex("x", tiemout: 1) { 1 } }.to raise_error(ArgumentError, /:tiemout/)
      expect { widget_maker.with_distributed_mutex("x", 5) { 1 } }.to raise_error(ArgumentError, /options must be a Hash/)
    end

    it "waits forever by default (like the original) until the holder releases" do
      holder = held_elsewhere("wait")
      waiter = Thread.new { widget_maker.with_distributed_mutex("wait") { :got_it } }
      wait_for(message: "waiter to start polling") { waiter.status == "sleep" }
      expect(waiter.join(0.3)).to be_nil # still waiting, no timeout by default
      holder.unlock
      expect(waiter.value).to eq(:got_it)
    end
  end

  describe "timeouts" do
    let!(:holder) { held_elsewhere("busy") }

    after { holder.unlock }

    it "raises TimeoutError with the original message and never runs the block" do
      ran = false
      expect { widget_maker.with_distributed_mutex("busy", timeout: 0.3) { ran = true } }
        .to raise_error(MegaMutex::TimeoutError, "Failed to obtain a lock within 0.3 seconds.") { |e|
          expect(e).to be_a(MegaMutex::Error)
          expect(e.holder).to eq(holder.holder)
          expect(e.id).to eq("busy")
        }
      expect(ran).to be(false)
    end

    it "tries exactly once with timeout: 0" do
      expect { widget_maker.with_distributed_mutex("busy", timeout: 0) { 1 } }.to raise_error(MegaMutex::TimeoutError)
      lock = MegaMutex::Lock.new("busy", timeout: 0)
      expect(lock.try_lock).to be(false)
    end

    it "uses config.default_timeout when no timeout is given" do
      MegaMutex.configure { |c| c.default_timeout = 0.1 }
      expect { widget_maker.with_distributed_mutex("busy") { 1 } }
        .to raise_error(MegaMutex::TimeoutError, "Failed to obtain a lock within 0.1 seconds.")
    end

    it "lets an explicit timeout: nil wait forever even when a default is configured" do
      MegaMutex.configure { |c| c.default_timeout = 0.05 }
      waiter = Thread.new { widget_maker.with_distributed_mutex("busy", timeout: nil) { :waited } }
      expect(waiter.join(0.3)).to be_nil
      holder.unlock
      expect(waiter.value).to eq(:waited)
    end

    [-1, Float::NAN, "1", :soon, true, Complex(1, 1)].each do |bad|
      it "rejects timeout #{bad.inspect} with ArgumentError" do
        expect { widget_maker.with_distributed_mutex("x", timeout: bad) { 1 } }.to raise_error(ArgumentError, /timeout/)
      end
    end

    it "treats Float::INFINITY as waiting forever" do
      expect(MegaMutex::Lock.new("x", timeout: Float::INFINITY).timeout).to be_nil
    end
  end

  describe "reentrancy" do
    it "runs a nested call for the same id in the same thread at once" do
      result = widget_maker.with_distributed_mutex("r", timeout: 1) do
        widget_maker.with_distributed_mutex("r", timeout: 0) { :inner }
      end
      expect(result).to eq(:inner)
    end

    it "keeps the lock until the outermost block exits" do
      widget_maker.with_distributed_mutex("r") do
        token = MegaMutex.get_current_lock("r")
        widget_maker.with_distributed_mutex(:r) { nil } # Symbol and String name the same lock
        expect(MegaMutex.get_current_lock("r")).to eq(token)
        inner = MegaMutex::Lock.new("r")
        expect(inner.try_lock).to be(true) # reentrant through Lock too
        expect(inner.unlock).to be(true)
        expect(MegaMutex.get_current_lock("r")).to eq(token)
      end
      expect(MegaMutex.get_current_lock("r")).to be_nil
    end

    it "does not make other threads reentrant" do
      widget_maker.with_distributed_mutex("r") do
        other = Thread.new { MegaMutex::Lock.new("r").try_lock }.value
        expect(other).to be(false)
      end
    end
  end

  describe ".get_current_lock" do
    it "returns the holder's token, or nil" do
      expect(MegaMutex.get_current_lock("g")).to be_nil
      lock = MegaMutex::Lock.new("g")
      lock.lock
      expect(MegaMutex.get_current_lock("g")).to eq(memcached.get(key_for("g")))
      lock.unlock
      expect(MegaMutex.get_current_lock("g")).to be_nil
    end
  end

  describe MegaMutex::Lock do
    subject(:lock) { described_class.new("obj", timeout: 1) }

    it "locks, reports ownership, and unlocks" do
      expect(lock.locked?).to be(false)
      expect(lock.lock).to be(true)
      expect(lock).to be_owned
      expect(lock).to be_locked
      expect(lock.unlock).to be(true)
      expect(lock).not_to be_owned
      expect(lock.locked?).to be(false)
    end

    it "returns false from unlock when it does not hold the lock" do
      expect(lock.unlock).to be(false)
    end

    it "try_lock is true when free and false when held elsewhere, without waiting" do
      other = held_elsewhere("obj")
      t0 = monotonic
      expect(lock.try_lock).to be(false)
      expect(monotonic - t0).to be < 1.0
      expect(lock).not_to be_owned
      Thread.new { other.unlock }.join
      expect(lock.try_lock).to be(true)
      lock.unlock
    end

    it "never removes a lock someone else holds now" do
      lock.lock
      memcached.command("delete #{lock.key}") # as if the lease had expired
      thief = held_elsewhere("obj")
      expect(lock.unlock).to be(false) # lost, and thief keeps it
      expect(MegaMutex.get_current_lock("obj")).to eq(thief.holder)
      Thread.new { thief.unlock }.join
    end

    it "synchronize returns the block's value and releases" do
      expect(lock.synchronize { 7 }).to eq(7)
      expect(lock).not_to be_owned
      expect(lock.locked?).to be(false)
    end

    it "is counted: a lock taken twice is released by the second unlock" do
      lock.lock
      lock.lock
      expect(lock.unlock).to be(true)
      expect(lock.locked?).to be(true)
      expect(lock.unlock).to be(true)
      expect(lock.locked?).to be(false)
    end

    it "sets a lease on the key (lock_ttl + 2 s for the server's clock tick and lag)" do
      lock.lock
      ttl = memcached.command("mg #{lock.key} t")[/\bt(\d+)/, 1].to_i
      expect(ttl).to be_between(MegaMutex.configuration.lock_ttl, MegaMutex.configuration.lock_ttl + 2)
      lock.unlock
    end
  end
end
