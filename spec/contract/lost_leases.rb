# frozen_string_literal: true

# Leases: a lock held past its lease length is kept; a lease taken away
# behind the holder's back (crash, restart, eviction, flush) is reported to
# the holder - lost?, an error in the log, LockLostError after the block (or
# the log only, with on_lock_lost = :log) - and nobody else's lock is removed.
RSpec.shared_examples "contract: lost leases" do
  describe "leases" do
    let(:logged) { StringIO.new }

    before { backend.use(lock_ttl: 1, logger: Logger.new(logged)) }

    it "a healthy lock is not reported lost" do
      lock = MegaMutex::Lock.new("healthy")
      expect(lock.synchronize { lock.lost? }).to be(false)
      expect(lock.lost?).to be(false)
      expect(logged.string).not_to match(/ERROR/)
    end

    it "a lock held for longer than its lease is kept, and nobody else gets in meanwhile", :slow do
      lock = MegaMutex::Lock.new("long")
      lock.lock
      token = lock.holder
      # lock_ttl 1 (up to 3 s on the wire): 4.5 s held is more than a lease.
      deadline = monotonic + 4.5
      stolen = 0
      while monotonic < deadline
        stolen += 1 if Thread.new { MegaMutex::Lock.new("long").tap(&:try_lock) }.value.then { |l| l.owned? && l.unlock }
        sleep 0.05
      end
      expect(stolen).to eq(0)
      expect(lock.holder).to eq(token)
      expect(lock.lost?).to be(false)
      expect(lock.unlock).to be(true)
    end

    it "a lease lost while the block runs: lost? turns true, an error is logged, LockLostError comes after the block" do
      finished = false
      expect do
        MegaMutex.with_distributed_mutex("lose") do |lock|
          expect(lock).not_to be_lost
          backend.lose_lease(lock)
          wait_for(within: 5, message: "the holder to find its lease gone") { lock.lost? }
          finished = true
        end
      end.to raise_error(MegaMutex::LockLostError) { |e|
        expect(e).to be_a(MegaMutex::Error)
        expect(e.id).to eq("lose")
        expect(e.reason).to be_a(String).and(satisfy { |r| !r.empty? })
        expect(e.message).to include('"lose"')
      }
      expect(finished).to be(true) # the block ran to its end
      # lost? turns true the moment the loss is known; the renewer's thread
      # logs it right after (the release may have seen it first): wait for it.
      wait_for(within: 5, message: "the loss in the log") { logged.string.match?(/ERROR.*#{Regexp.escape(key_for('lose'))}/) }
      expect(MegaMutex::Lock.holds).to be_empty
    end

    it "with on_lock_lost = :log, a lost lease is only logged and the block's value comes back" do
      backend.use(on_lock_lost: :log)
      result = MegaMutex.with_distributed_mutex("lose") do |lock|
        backend.lose_lease(lock)
        wait_for(within: 5, message: "the holder to find its lease gone") { lock.lost? }
        :value
      end
      expect(result).to eq(:value)
      wait_for(within: 5, message: "the loss in the log") { logged.string.match?(/ERROR.*#{Regexp.escape(key_for('lose'))}/) }
    end

    it "a lease lost and taken by someone else: unlock says false, lost? is true, the new holder keeps its lock" do
      lock = MegaMutex::Lock.new("taken-over")
      lock.lock
      backend.lose_lease(lock)
      thief = hold_elsewhere("taken-over", timeout: 10)
      expect(thief.token).not_to be_nil
      expect(lock.unlock).to be(false)
      expect(lock).to be_lost
      expect(lock).not_to be_owned
      expect(MegaMutex.get_current_lock("taken-over")).to eq(thief.token)
      thief.release
      expect(MegaMutex.get_current_lock("taken-over")).to be_nil
    end

    it "LockLostError after a block whose lease was taken over, and the new holder keeps its lock" do
      thief = nil
      lock = MegaMutex::Lock.new("taken-over")
      expect do
        lock.synchronize do
          backend.lose_lease(lock)
          thief = hold_elsewhere("taken-over", timeout: 10)
        end
      end.to raise_error(MegaMutex::LockLostError)
      expect(lock).to be_lost
      expect(MegaMutex.get_current_lock("taken-over")).to eq(thief.token)
      thief.release
    end
  end
end
