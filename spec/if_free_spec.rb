# frozen_string_literal: true

# "Skip if busy": with_distributed_mutex_if_free runs the block only if the
# lock can be had (at once by default), and says whether it ran. Against the
# suite's real memcached; a down server is an error, never "busy".
RSpec.describe "with_distributed_mutex_if_free" do
  let(:id) { "job-#{SecureRandom.hex(3)}" }

  it "runs the block when the lock is free and returns true; the lock is held inside and released after" do
    inside = nil
    ran = MegaMutex.with_distributed_mutex_if_free(id) { inside = MegaMutex.get_current_lock(id) }
    expect(ran).to be(true)
    expect(inside).not_to be_nil
    expect(MegaMutex.get_current_lock(id)).to be_nil
  end

  it "returns false at once without running the block while another process holds the lock" do
    env = { "MEMCACHE_SERVERS" => memcached.address, "MM_NAMESPACE" => @namespace }
    script = "$LOAD_PATH.unshift(#{File.join(SpecHelpers::ROOT, 'lib').inspect}); require 'mega_mutex'; " \
             "MegaMutex.configure { |c| c.namespace = ENV['MM_NAMESPACE'] }; " \
             "lock = MegaMutex::Lock.new(ARGV[0]); lock.lock; puts 'held'; $stdout.flush; $stdin.read; lock.unlock"
    Open3.popen2(env, RbConfig.ruby, "-e", script, id) do |stdin, stdout, waiter|
      expect(stdout.gets).to eq("held\n")
      expect(MegaMutex.with_distributed_mutex_if_free(id) { raise "must not run" }).to be(false)
      stdin.close
      expect(waiter.value).to be_success
    end
    expect(MegaMutex.with_distributed_mutex_if_free(id) { nil }).to be(true)
  end

  it "returns false without running the block while another thread holds the lock, taking no time to say so" do
    other = held_elsewhere(id)
    started = monotonic
    ran = MegaMutex.with_distributed_mutex_if_free(id) { raise "must not run" }
    expect(ran).to be(false)
    expect(monotonic - started).to be < 3 # one try, not a wait (generous bound)
    expect(MegaMutex.get_current_lock(id)).to eq(other.holder)
  ensure
    other&.unlock
  end

  it "works the same through include MegaMutex" do
    klass = Class.new do
      include MegaMutex

      def run(id) = with_distributed_mutex_if_free(id) { :done }
    end
    expect(klass.new.run(id)).to be(true)
    other = held_elsewhere(id)
    expect(klass.new.run(id)).to be(false)
    other.unlock
  end

  it "waits up to timeout: for a lock that is released meanwhile, then runs the block" do
    other = held_elsewhere(id)
    releaser = Thread.new do
      sleep 0.2
      other.unlock
    end
    ran = MegaMutex.with_distributed_mutex_if_free(id, timeout: 10) { :ok }
    expect(ran).to be(true)
    releaser.join
  end

  it "gives up with false when timeout: runs out" do
    other = held_elsewhere(id)
    expect(MegaMutex.with_distributed_mutex_if_free(id, timeout: 0.2) { raise "must not run" }).to be(false)
  ensure
    other&.unlock
  end

  it "raises ConnectionError, and does not run the block, when the server is down: down is not busy" do
    MegaMutex.configure { |c| c.memcache_servers = ["127.0.0.1:#{MemcachedServer.free_port}"] }
    ran = false
    expect { MegaMutex.with_distributed_mutex_if_free(id) { ran = true } }.to raise_error(MegaMutex::ConnectionError)
    expect(ran).to be(false)
  end

  it "lets a TimeoutError from inside the block propagate instead of reading it as busy" do
    other_id = "#{id}-inner"
    other = held_elsewhere(other_id)
    expect do
      MegaMutex.with_distributed_mutex_if_free(id) { MegaMutex.with_distributed_mutex(other_id, timeout: 0) { nil } }
    end.to raise_error(MegaMutex::TimeoutError)
    expect(MegaMutex.get_current_lock(id)).to be_nil
  ensure
    other&.unlock
  end

  it "runs the block (and returns true) in a thread that already holds the lock: reentrancy" do
    ran = MegaMutex.with_distributed_mutex(id) { MegaMutex.with_distributed_mutex_if_free(id) { :inner } }
    expect(ran).to be(true)
    expect(MegaMutex.get_current_lock(id)).to be_nil
  end

  it "passes the lock to a block that takes it, and raises LockLostError after a block whose lease was lost" do
    expect do
      MegaMutex.with_distributed_mutex_if_free(id) do |lock|
        expect(lock).to be_a(MegaMutex::Lock)
        MegaMutex.pool.with { |client| client._force_release(lock.key) } # as after a restart or eviction
      end
    end.to raise_error(MegaMutex::LockLostError)
  end

  it "rejects a missing block, unknown options and bad timeouts with ArgumentError" do
    expect { MegaMutex.with_distributed_mutex_if_free(id) }.to raise_error(ArgumentError, /block/)
    expect { MegaMutex.with_distributed_mutex_if_free(id, tiemout: 1) { nil } }.to raise_error(ArgumentError, /tiemout/)
    expect { MegaMutex.with_distributed_mutex_if_free(id, timeout: -1) { nil } }.to raise_error(ArgumentError, /timeout/)
    expect { MegaMutex.with_distributed_mutex_if_free(nil) { nil } }.to raise_error(ArgumentError, /nil/)
  end

  it "works with the memory backend" do
    MegaMutex.configure { |c| c.backend = :memory }
    expect(MegaMutex.with_distributed_mutex_if_free(id) { nil }).to be(true)
    other = held_elsewhere(id)
    expect(MegaMutex.with_distributed_mutex_if_free(id) { raise "must not run" }).to be(false)
    other.unlock
  ensure
    MegaMutex::MemoryStore.reset!
  end
end
