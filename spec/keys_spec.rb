# frozen_string_literal: true

RSpec.describe "lock ids and keys" do
  ids = {
    "plain string" => "WidgetMaker Mutex ID",
    "symbol" => :widgets,
    "integer" => 42,
    "negative integer" => -7,
    "CR/LF (protocol injection attempt)" => "x\r\nflush_all\r\nset evil 0 0 1",
    "control bytes" => "\x00\x01\x7f\e[31m",
    "unicode" => "ウィジェット🔒",
    "10 KB" => "w" * 10_240,
    "exactly the key limit" => "k" * (250 - "tXXXXXXXX:".bytesize),
    "hash sign" => "a#b",
    "invalid UTF-8" => "\xff\xfe".dup.force_encoding("UTF-8")
  }

  ids.each do |name, id|
    it "locks safely with a #{name} id" do
      key = key_for(id)
      expect(key.bytesize).to be <= 250
      expect(key).to match(/\A[\x21-\x7e]+\z/)
      result = MegaMutex.with_distributed_mutex(id) do
        expect(MegaMutex::Lock.new(id).tap { |l| Thread.new { l.try_lock }.join }).not_to be_owned
        expect(memcached.get(key)).to eq(MegaMutex.get_current_lock(id))
        :ran
      end
      expect(result).to eq(:ran)
      expect(MegaMutex.get_current_lock(id)).to be_nil
      expect(memcached.get("evil")).to be_nil
      expect(memcached.command("version")).to start_with("VERSION") # connection-level sanity
    end
  end

  it "keeps short printable ids readable in the key" do
    expect(key_for("report:2024-01")).to eq("#{@namespace}:report:2024-01")
  end

  it "hashes ids that cannot be sent verbatim, keeping a readable prefix" do
    expect(key_for("has space")).to match(/\A#{@namespace}:has_space#\h{64}\z/)
  end

  it "gives distinct ids distinct locks, even ones that look alike once sanitised" do
    a = key_for("a b")
    b = key_for("a_b")
    c = key_for("a\tb")
    expect([a, b, c].uniq.size).to eq(3)
    MegaMutex.with_distributed_mutex("a b") do
      expect(Thread.new { MegaMutex::Lock.new("a_b").try_lock }.value).to be(true)
    end
  end

  it "treats a String and a Symbol with the same name as the same lock" do
    expect(key_for(:widgets)).to eq(key_for("widgets"))
  end

  [nil, "", :"", [1], Object.new, 1.5].each do |bad|
    it "rejects id #{bad.inspect} with ArgumentError" do
      expect { MegaMutex.with_distributed_mutex(bad) { :never } }.to raise_error(ArgumentError, /mutex id/)
      expect { MegaMutex.get_current_lock(bad) }.to raise_error(ArgumentError, /mutex id/)
    end
  end
end
