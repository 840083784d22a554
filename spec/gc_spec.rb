# frozen_string_literal: true

RSpec.describe "memory safety under the garbage collector" do
  def exercise
    results = []
    results << MegaMutex.with_distributed_mutex("gc-a") { MegaMutex.get_current_lock("gc-a").class }
    lock = MegaMutex::Lock.new("gc id with spaces #{'x' * 300}")
    results << lock.try_lock << lock.owned? << lock.unlock
    busy = held_elsewhere("gc-busy")
    begin
      MegaMutex.with_distributed_mutex("gc-busy", timeout: 0.01) { :never }
    rescue MegaMutex::TimeoutError => e
      results << e.holder.class
    ensure
      busy.unlock
    end
    results
  end

  it "runs lock cycles correctly with GC.stress on" do
    GC.stress = true
    results = exercise
  ensure
    GC.stress = false
    expect(results).to eq([String, true, true, true, String])
  end

  it "survives GC compaction with live clients and holds (GC.verify_compaction_references)" do
    lock = MegaMutex::Lock.new("gc-compact")
    lock.lock
    3.times { MegaMutex.pool.with { |c| c._read(lock.key) } } # clients in the pool
    GC.verify_compaction_references(double_heap: true, toward: :empty)
    expect(MegaMutex.get_current_lock("gc-compact")).to eq(lock.holder)
    expect(lock.unlock).to be(true)
    expect(exercise).to eq([String, true, true, true, String])
  end

  it "frees clients that are no longer referenced without disturbing live ones" do
    clients = Array.new(20) { MegaMutex::Native::Client.new([["127.0.0.1", memcached.port]], 1000, 1000, 1) }
    clients.each { |c| c._read("#{@namespace}:warm") }
    clients = nil
    GC.start(full_mark: true, immediate_sweep: true)
    expect(MegaMutex.with_distributed_mutex("after-free") { :fine }).to eq(:fine)
    expect(clients).to be_nil
  end

  it "rejects bad arguments to the native client with exceptions, not crashes" do
    c = MegaMutex::Native::Client.new([["127.0.0.1", memcached.port]], 1000, 1000, 1)
    expect { c._read("has space") }.to raise_error(ArgumentError, /key/)
    expect { c._read("x" * 251) }.to raise_error(ArgumentError, /key/)
    expect { c._read(nil) }.to raise_error(TypeError)
    expect { c._release("k", "bad token", 1) }.to raise_error(ArgumentError, /token/)
    expect { c._acquire(Object.new, "k", "t", 0, 1, 0.01, 0.1) }.to raise_error(ArgumentError, /ttl/)
    expect { c._acquire(Object.new, "k", "t", 5, -1, 0.01, 0.1) }.to raise_error(ArgumentError, /timeout/)
    expect { c._acquire(Object.new, "k", "t", 5, 1, 0.2, 0.1) }.to raise_error(ArgumentError, /backoff/)
    expect { MegaMutex::Native::Client.new([], 1000, 1000, 1) }.to raise_error(ArgumentError, /servers/)
    expect { MegaMutex::Native::Client.new([["h", 70_000]], 1000, 1000, 1) }.to raise_error(ArgumentError, /port/)
    expect { MegaMutex::Native::Client.new([["h\0x", 1]], 1000, 1000, 1) }.to raise_error(ArgumentError)
    c.close
    expect(c).to be_closed
    expect { c._read("k") }.to raise_error(MegaMutex::Error, /closed/)
  end
end
