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

  it "hashes ids that cannot be sent verbatim, keeping a readable prefix and 128 bits of SHA-256" do
    expect(key_for("has space")).to match(/\A#{@namespace}:has_space#\h{32}\z/)
    expect(key_for("WidgetMaker Mutex ID"))
      .to eq("#{@namespace}:WidgetMaker_Mutex_ID##{Digest::SHA256.hexdigest('WidgetMaker Mutex ID')[0, 32]}")
    long = "k" * 300
    expect(key_for(long)).to eq("#{@namespace}:#{'k' * 40}##{Digest::SHA256.hexdigest(long)[0, 32]}")
  end

  describe "one key per (namespace, id) pair" do
    namespaces = ["app", "app:jobs", "app.jobs", "app_jobs", "app-jobs", "app/jobs", "a", "app@x", "app=x", "app+x"]
    ids = ["jobs:42", "42", "jobs", "x:jobs:42", ":42", "42:", "a#b", "jobs 42", "jobs_42", "k" * 300, "k" * 301, ":"]

    it "rejects a namespace with a colon, which would end the namespace in a key" do
      expect { MegaMutex.configure { |c| c.namespace = "app:jobs" } }.to raise_error(ArgumentError, /namespace.*":"/)
    end

    it "gives every valid namespace and id its own key, whose namespace is everything before the first colon" do
      valid = namespaces.select do |ns|
        MegaMutex::Configuration.new.namespace = ns
      rescue ArgumentError
        false
      end
      expect(valid).to include("app", "app.jobs")
      keys = valid.product(ids).to_h { |ns, id| [[ns, id], MegaMutex::Key.for(ns, id)] }
      clashes = keys.group_by(&:last).values.select { |pairs| pairs.size > 1 }.map { |pairs| pairs.map(&:first) }
      expect(clashes).to eq([])
      keys.each { |(ns, _), key| expect(key[/\A[^:]*/]).to eq(ns), key }
    end

    it "keeps (ns, \"jobs:42\") and (ns:jobs, \"42\") apart: a process cannot take the second while the first is held" do
      MegaMutex.with_distributed_mutex("jobs:42") do
        out, err, status = run_ruby(<<~RUBY)
          begin
            MegaMutex.configure { |c| c.namespace = "#{@namespace}:jobs" }
            print MegaMutex::Lock.new("42").try_lock ? "taken" : "refused: held by another lock"
          rescue ArgumentError => e
            print "rejected: \#{e.message}"
          end
        RUBY
        expect(status).to be_success, err
        expect(out).to start_with("rejected: namespace")
      end
    end
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
