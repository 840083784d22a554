# frozen_string_literal: true

# Reentrancy: per thread, through blocks and Lock objects alike; the lock is
# given back when the outermost holder lets go; other threads are refused.
RSpec.shared_examples "contract: reentrancy" do
  describe "reentrancy" do
    it "runs a nested block for the same id at once (String and Symbol name one lock) and keeps the lock until the outermost block ends" do
      seen = MegaMutex.with_distributed_mutex("nested", timeout: 0) do
        outer = MegaMutex.get_current_lock("nested")
        inner = MegaMutex.with_distributed_mutex(:nested, timeout: 0) do
          MegaMutex.with_distributed_mutex("nested", timeout: 0) { MegaMutex.get_current_lock("nested") }
        end
        [outer, inner, MegaMutex.get_current_lock("nested")]
      end
      expect(seen[0]).to be_a(String)
      expect(seen).to eq([seen[0]] * 3) # one holder throughout: the nested blocks took nothing new
      expect(MegaMutex.get_current_lock("nested")).to be_nil
    end

    it "counts Lock#lock: the same Lock taken twice is given back by the second unlock" do
      lock = MegaMutex::Lock.new("counted", timeout: 0)
      expect(lock.lock).to be(true)
      token = lock.holder
      expect(lock.lock).to be(true)
      expect(lock.try_lock).to be(true)
      expect(lock.unlock).to be(true)
      expect(lock.unlock).to be(true)
      expect([lock.owned?, lock.holder]).to eq([true, token])
      expect(lock.unlock).to be(true)
      expect([lock.owned?, lock.holder]).to eq([false, nil])
      expect(lock.unlock).to be(false) # not held any more
    end

    it "lets a second Lock object and a block reenter in the same thread; the outermost release frees it" do
      outer = MegaMutex::Lock.new("objects")
      outer.lock
      token = outer.holder
      inner = MegaMutex::Lock.new("objects")
      expect(inner.try_lock).to be(true)
      expect(MegaMutex.with_distributed_mutex("objects", timeout: 0) { |lock| [lock.owned?, lock.holder] }).to eq([true, token])
      expect(inner.unlock).to be(true)
      expect(outer).to be_owned
      expect(MegaMutex.get_current_lock("objects")).to eq(token)
      expect(outer.unlock).to be(true)
      expect(MegaMutex.get_current_lock("objects")).to be_nil
    end

    it "is per thread: while a thread holds an id (nested or not), other threads are refused and wait for its outermost release" do
      entered = Queue.new
      leave_inner = Queue.new
      leave_outer = Queue.new
      owner = Thread.new do
        MegaMutex.with_distributed_mutex("per-thread") do
          MegaMutex.with_distributed_mutex("per-thread") do
            entered << MegaMutex.get_current_lock("per-thread")
            leave_inner.pop
          end
          entered << :inner_done
          leave_outer.pop
        end
      end
      token = entered.pop
      expect(Thread.new { MegaMutex::Lock.new("per-thread").try_lock }.value).to be(false)
      refused = Thread.new do
        Thread.current.report_on_exception = false
        MegaMutex.with_distributed_mutex("per-thread", timeout: 0) { :ran }
      end
      expect { value_of(refused) }
        .to raise_error(MegaMutex::TimeoutError)
      expect(MegaMutex::Lock.new("per-thread").try_lock).to be(false) # nor this thread, which holds nothing

      waiter = Thread.new { MegaMutex.with_distributed_mutex("per-thread", timeout: 30) { :waited } }
      wait_for(message: "the waiter to wait") { waiter.status == "sleep" }
      leave_inner << :go
      expect(entered.pop).to eq(:inner_done)
      expect(MegaMutex.get_current_lock("per-thread")).to eq(token) # the inner release gave nothing back
      expect(waiter).to be_alive
      leave_outer << :go
      expect(value_of(waiter, within: 30)).to eq(:waited)
      value_of(owner)
      expect(MegaMutex.get_current_lock("per-thread")).to be_nil
    end
  end
end
