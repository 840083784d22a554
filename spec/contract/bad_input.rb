# frozen_string_literal: true

# Bad input raises ArgumentError naming what was wrong, before anything is
# taken; every id the API accepts (String, Symbol, Integer; any bytes, any
# length) names a lock of its own.
RSpec.shared_examples "contract: bad input" do
  describe "bad input" do
    bad_ids = [nil, "", 1.5, Object.new, [], {}, :"", true]
    bad_timeouts = [-1, -0.001, Float::NAN, "1", :soon, true, Complex(1, 1), []]
    bad_ttls = [0, 0.5, -1, Float::NAN, Float::INFINITY, "5", :long, 2_592_001, 10**12]

    def nothing_taken
      expect(MegaMutex::Lock.holds).to be_empty
    end

    it "an id of the wrong type, or an empty one, raises ArgumentError naming the mutex id, everywhere an id is taken" do
      bad_ids.each do |id|
        calls = {
          "with_distributed_mutex" => -> { MegaMutex.with_distributed_mutex(id) { raise "the block ran for #{id.inspect}" } },
          "with_distributed_mutex_if_free" => -> { MegaMutex.with_distributed_mutex_if_free(id) { raise "the block ran for #{id.inspect}" } },
          "Lock.new" => -> { MegaMutex::Lock.new(id) },
          "get_current_lock" => -> { MegaMutex.get_current_lock(id) }
        }
        calls.each do |name, call|
          expect(&call).to raise_error(ArgumentError, /mutex id/), "#{name}(#{id.inspect})"
        end
      end
      nothing_taken
    end

    it "a bad timeout raises ArgumentError naming the timeout, everywhere a timeout is taken" do
      lock = MegaMutex::Lock.new("t")
      bad_timeouts.each do |timeout|
        calls = {
          "with_distributed_mutex" => -> { MegaMutex.with_distributed_mutex("t", timeout: timeout) { raise "the block ran" } },
          "with_distributed_mutex_if_free" => -> { MegaMutex.with_distributed_mutex_if_free("t", timeout: timeout) { raise "the block ran" } },
          "with_distributed_mutex (positional Hash)" => -> { MegaMutex.with_distributed_mutex("t", { timeout: timeout }) { raise "the block ran" } },
          "Lock.new" => -> { MegaMutex::Lock.new("t", timeout: timeout) },
          "Lock#lock" => -> { lock.lock(timeout: timeout) },
          "Lock#synchronize" => -> { lock.synchronize(timeout: timeout) { raise "the block ran" } }
        }
        calls.each do |name, call|
          expect(&call).to raise_error(ArgumentError, /timeout/), "#{name} with timeout #{timeout.inspect}"
        end
      end
      expect(lock).not_to be_owned
      expect(MegaMutex.get_current_lock("t")).to be_nil
      nothing_taken
    end

    it "a bad ttl raises ArgumentError naming the ttl" do
      bad_ttls.each do |ttl|
        expect { MegaMutex.with_distributed_mutex("t", ttl: ttl) { raise "the block ran" } }
          .to raise_error(ArgumentError, /ttl/), "with_distributed_mutex with ttl #{ttl.inspect}"
        expect { MegaMutex::Lock.new("t", ttl: ttl) }.to raise_error(ArgumentError, /ttl/), "Lock.new with ttl #{ttl.inspect}"
        expect { MegaMutex.with_distributed_mutex_if_free("t", ttl: ttl) { raise "the block ran" } }
          .to raise_error(ArgumentError, /ttl/), "with_distributed_mutex_if_free with ttl #{ttl.inspect}"
        expect { backend.use(lock_ttl: ttl) }.to raise_error(ArgumentError, /lock_ttl/), "config.lock_ttl = #{ttl.inspect}"
      end
      expect(MegaMutex.get_current_lock("t")).to be_nil
      nothing_taken
    end

    it "an unknown option, options that are not a Hash, or no block raise ArgumentError saying so" do
      expect { MegaMutex.with_distributed_mutex("t", tiemout: 1) { 1 } }.to raise_error(ArgumentError, /:tiemout/)
      expect { MegaMutex.with_distributed_mutex("t", 5) { 1 } }.to raise_error(ArgumentError, /options must be a Hash/)
      expect { MegaMutex.with_distributed_mutex("t") }.to raise_error(ArgumentError, /block/)
      expect { MegaMutex.with_distributed_mutex_if_free("t") }.to raise_error(ArgumentError, /block/)
      expect { MegaMutex.with_distributed_mutex_if_free("t", tiemout: 1) { 1 } }.to raise_error(ArgumentError, /:tiemout/)
      expect { MegaMutex::Lock.new("t").synchronize }.to raise_error(ArgumentError, /block/)
      expect(MegaMutex.get_current_lock("t")).to be_nil
      nothing_taken
    end

    it "accepts any String, Symbol or Integer id - any bytes, any length - and gives each its own lock" do
      ids = ["plain", :plain_symbol, 42, -7, 2**80, "with space", "with_space", "new\r\nline", "new  line", "tab\there",
             "ünïcødé", "\x00\xff".b, "#" * 300, "#" * 301, "x" * 10_000, "a:b", "a/b", "emoji 🔒"]
      # One thread takes them all, each through a Lock of its own: two ids
      # that shared a lock would be a reentrant take, with the same token.
      locks = ids.map { |id| MegaMutex::Lock.new(id, timeout: 0) }
      expect(locks.map(&:try_lock)).to all(be(true))
      tokens = ids.map { |id| MegaMutex.get_current_lock(id) }
      expect(tokens).to all(match(ContractHelpers::TOKEN))
      expect(tokens.uniq.size).to eq(ids.size)
      expect(Thread.new { locks.map { |l| MegaMutex::Lock.new(l.id).try_lock } }.value).to all(be(false))
      expect(locks.map(&:unlock)).to all(be(true))
      ids.each { |id| expect(MegaMutex.get_current_lock(id)).to be_nil, id.inspect }
    end
  end
end
