# frozen_string_literal: true

# Threads of one process: the same id excludes them exactly as it excludes
# processes, distinct ids do not, and a thread waiting for a lock releases the
# GVL so the rest of the process keeps running.
RSpec.describe "MegaMutex with many threads in one process" do
  include MegaMutex

  # A barrier for `parties` threads. The returned lambda blocks until every
  # party has called it, and returns true; it gives up and returns false
  # after `within` seconds instead of hanging.
  def barrier(parties, within: 5)
    arrived = 0
    mutex = Mutex.new
    cond = ConditionVariable.new
    lambda do
      deadline = monotonic + within
      mutex.synchronize do
        arrived += 1
        cond.broadcast
        while arrived < parties
          left = deadline - monotonic
          break if left <= 0

          cond.wait(mutex, left)
        end
        arrived >= parties
      end
    end
  end

  it "lets only one of 16 threads at a time into the critical section of one id, and runs every section" do
    threads = 16
    rounds = 15
    guard = Mutex.new # protects the bookkeeping only, never the section itself
    inside = 0
    max_inside = 0
    overlaps = 0
    sections = 0

    workers = Array.new(threads) do |t|
      Thread.new do
        Array.new(rounds) do |r|
          with_distributed_mutex("threads-one-id", timeout: 30) do
            guard.synchronize do
              inside += 1
              overlaps += 1 if inside > 1
              max_inside = inside if inside > max_inside
            end
            # Give the other threads every chance to barge in.
            r.even? ? Thread.pass : sleep(0.0005)
            guard.synchronize do
              sections += 1
              inside -= 1
            end
            [t, r]
          end
        end
      end
    end
    results = workers.map(&:value)

    expect(overlaps).to eq(0)
    expect(max_inside).to eq(1)
    expect(sections).to eq(threads * rounds)
    # Each block's value came back to the thread that ran it.
    expect(results).to eq(Array.new(threads) { |t| Array.new(rounds) { |r| [t, r] } })
    expect(MegaMutex.get_current_lock("threads-one-id")).to be_nil
  end

  it "loses no update of a racy read-modify-write done by 16 threads under the same id" do
    counter = [0]
    workers = Array.new(16) do
      Thread.new do
        10.times do
          with_distributed_mutex("threads-rmw", timeout: 30) do
            n = counter[0]
            Thread.pass # a plain Ruby switch point between the read and the write
            counter[0] = n + 1
          end
        end
      end
    end
    workers.each(&:join)

    expect(counter[0]).to eq(160)
  end

  it "lets threads holding distinct ids be inside their critical sections at the same time" do
    ids = %w[distinct-a distinct-b distinct-c distinct-d]
    all_inside = barrier(ids.size, within: 5)
    workers = ids.map do |id|
      Thread.new do
        # Each thread can leave its section only once all of them are inside
        # theirs: impossible unless the four locks are held at once.
        with_distributed_mutex(id, timeout: 15) { [all_inside.call, MegaMutex.get_current_lock(id)] }
      end
    end
    results = workers.map(&:value)

    expect(results.map(&:first)).to all(be(true))
    # Four different holders (one token per acquisition), all seen while held.
    expect(results.map(&:last).compact.uniq.size).to eq(ids.size)
    ids.each { |id| expect(MegaMutex.get_current_lock(id)).to be_nil }
  end

  it "does not hold the GVL while a thread waits for a lock held elsewhere" do
    holder = MegaMutex::Lock.new("gvl-held")
    holder.lock
    token = MegaMutex.get_current_lock("gvl-held")
    expect(token).not_to be_nil
    waiter = Thread.new do
      with_distributed_mutex("gvl-held", timeout: 10) { :waiter_got_it }
    end

    counter = 0
    counting = true
    counter_thread = Thread.new do
      while counting
        counter += 1
        sleep 0.001 # lets the other threads have the GVL too
      end
    end

    begin
      # The waiter is blocked inside the lock call (a blocking region shows
      # as "sleep").
      wait_for(message: "the waiter to block") { waiter.status == "sleep" }

      # While it waits, plain Ruby threads run ...
      start = counter
      wait_for(within: 10, message: "the counter thread to make progress") { counter >= start + 200 }
      # ... and so do other MegaMutex calls, on other ids, in this thread.
      values = Array.new(20) { |i| with_distributed_mutex("gvl-other", timeout: 5) { i } }
      expect(values).to eq((0...20).to_a)

      # The waiter was waiting the whole time: it has not got the lock.
      expect(waiter).to be_alive
      expect(waiter.status).to eq("sleep")
      expect(MegaMutex.get_current_lock("gvl-held")).to eq(token)
    ensure
      counting = false
      counter_thread.join
      holder.unlock if holder.owned?
    end

    expect(waiter.value).to eq(:waiter_got_it)
    expect(MegaMutex.get_current_lock("gvl-held")).to be_nil
  end
end
