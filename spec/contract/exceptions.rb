# frozen_string_literal: true

# A block that ends by an exception, throw, break or next gives the lock back;
# the exception reaches the caller unchanged.
RSpec.shared_examples "contract: exceptions" do
  describe "exceptions" do
    let(:boom) { Class.new(StandardError) }

    it "an exception in the block reaches the caller unchanged, and the lock is free at once for another thread" do
      error = boom.new("inside")
      expect { MegaMutex.with_distributed_mutex("boom") { raise error } }.to raise_error { |e| expect(e).to be(error) }
      expect(MegaMutex.get_current_lock("boom")).to be_nil
      expect(MegaMutex::Lock.holds).to be_empty
      expect(Thread.new { MegaMutex.with_distributed_mutex("boom", timeout: 0) { :free_again } }.value).to eq(:free_again)
    end

    it "Lock#synchronize releases on an exception too, and the Lock can be taken again" do
      lock = MegaMutex::Lock.new("boom")
      expect { lock.synchronize { raise boom, "inside" } }.to raise_error(boom, "inside")
      expect(lock).not_to be_owned
      expect(lock.locked?).to be(false)
      expect(lock.synchronize { :again }).to eq(:again)
    end

    it "an exception in a nested block gives back only the inner level" do
      MegaMutex.with_distributed_mutex("nested-boom") do
        token = MegaMutex.get_current_lock("nested-boom")
        expect { MegaMutex.with_distributed_mutex("nested-boom") { raise boom, "inner" } }.to raise_error(boom, "inner")
        expect(MegaMutex.get_current_lock("nested-boom")).to eq(token)
        expect(Thread.new { MegaMutex::Lock.new("nested-boom").try_lock }.value).to be(false)
      end
      expect(MegaMutex.get_current_lock("nested-boom")).to be_nil
    end

    it "throw, break and next out of the block release the lock" do
      expect(catch(:out) { MegaMutex.with_distributed_mutex("jump") { throw :out, :thrown } }).to eq(:thrown)
      expect(MegaMutex.get_current_lock("jump")).to be_nil
      expect(MegaMutex.with_distributed_mutex("jump") { break :broken }).to eq(:broken)
      expect(MegaMutex.get_current_lock("jump")).to be_nil
      expect([1, 2].map { |i| MegaMutex.with_distributed_mutex("jump") { next i * 10 } }).to eq([10, 20])
      expect(MegaMutex.get_current_lock("jump")).to be_nil
      expect(MegaMutex::Lock.holds).to be_empty
    end

    it "a failing block in one thread does not disturb another thread waiting for the same id" do
      entered = Queue.new
      failing = Thread.new do
        Thread.current.report_on_exception = false
        MegaMutex.with_distributed_mutex("handoff") do
          entered << true
          sleep 0.001 until Thread.current[:go]
          raise boom, "failed"
        end
      end
      entered.pop
      waiter = Thread.new { MegaMutex.with_distributed_mutex("handoff", timeout: 30) { :after_failure } }
      wait_for(message: "the waiter to wait") { waiter.status == "sleep" }
      failing[:go] = true
      expect { value_of(failing) }.to raise_error(boom, "failed")
      expect(value_of(waiter, within: 30)).to eq(:after_failure)
    end
  end
end
