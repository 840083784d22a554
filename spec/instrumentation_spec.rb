# frozen_string_literal: true

require "logger"
require "stringio"

RSpec.describe "instrumentation" do
  # Subscribes to every mega_mutex event for the example; returns a lambda
  # giving the events received so far, as [name, payload, thread].
  def subscribe!
    require "active_support"
    require "active_support/notifications"
    received = []
    guard = Mutex.new
    subscriber = ActiveSupport::Notifications.subscribe(/\.mega_mutex\z/) do |event|
      guard.synchronize { received << [event.name, event.payload, Thread.current] }
    end
    @subscribers << subscriber
    -> { guard.synchronize { received.dup } }
  end

  def named(list, name)
    list.select { |event_name, _, _| event_name == name }.map { |_, payload, _| payload }
  end

  before { @subscribers = [] }

  after do
    @subscribers.each { |s| ActiveSupport::Notifications.unsubscribe(s) }
  end

  describe "ActiveSupport::Notifications events" do
    it "publishes acquire.mega_mutex and release.mega_mutex with id, key, wait, attempts and held time" do
      received = subscribe!
      started = monotonic
      MegaMutex.with_distributed_mutex("inst") do
        expect(named(received.call, "acquire.mega_mutex").size).to eq(1)
        expect(named(received.call, "release.mega_mutex")).to be_empty
      end
      elapsed = monotonic - started

      acquire, = named(received.call, "acquire.mega_mutex")
      expect(acquire).to include(id: "inst", key: key_for("inst"), attempts: 1)
      expect(acquire[:wait]).to be_a(Float).and be_between(0, elapsed)

      release, = named(received.call, "release.mega_mutex")
      expect(release).to include(id: "inst", key: key_for("inst"), lost: false)
      expect(release[:held]).to be_a(Float).and be_between(0, elapsed)
      expect(received.call.map(&:first)).to eq(%w[acquire.mega_mutex release.mega_mutex])
    end

    it "publishes one acquire and one release for nested (reentrant) blocks" do
      received = subscribe!
      MegaMutex.with_distributed_mutex(:nested) { MegaMutex.with_distributed_mutex("nested") { nil } }
      expect(received.call.map(&:first)).to eq(%w[acquire.mega_mutex release.mega_mutex])
      expect(named(received.call, "acquire.mega_mutex").first).to include(id: :nested, key: key_for("nested"))
    end

    it "publishes timeout.mega_mutex with id, key, timeout and the holder when the wait runs out" do
      holder = held_elsewhere("busy")
      received = subscribe!
      expect { MegaMutex.with_distributed_mutex("busy", timeout: 0.05) { nil } }.to raise_error(MegaMutex::TimeoutError)
      expect(received.call.map(&:first)).to eq(%w[timeout.mega_mutex])
      expect(named(received.call, "timeout.mega_mutex").first)
        .to eq(id: "busy", key: key_for("busy"), timeout: 0.05, holder: MegaMutex.get_current_lock("busy"))
      expect(MegaMutex.get_current_lock("busy")).to eq(holder.holder)
    ensure
      holder&.unlock
    end

    it "publishes lost.mega_mutex from the thread that reports the renewer's losses when the lease disappears, then release with lost: true" do
      MegaMutex.configure { |c| c.lock_ttl = 1 }
      received = subscribe!
      lock = MegaMutex::Lock.new("vanish")
      lock.lock
      memcached.command("delete #{lock.key}") # as a flush_all, eviction or restart would
      wait_for(within: 3, message: "the renewer to publish the loss") { named(received.call, "lost.mega_mutex").any? }

      name, payload, thread = received.call.find { |event_name, _, _| event_name == "lost.mega_mutex" }
      expect(name).to eq("lost.mega_mutex")
      expect(payload).to include(id: "vanish", key: lock.key)
      expect(payload[:reason]).to match(/not found when renewing/)
      expect(thread.name).to eq("mega_mutex losses")

      expect(lock.unlock).to be(false)
      expect(named(received.call, "lost.mega_mutex").size).to eq(1) # published once
      expect(named(received.call, "release.mega_mutex").first).to include(id: "vanish", key: lock.key, lost: true)
    end

    it "publishes lost.mega_mutex at release when someone else holds the lock by then" do
      received = subscribe!
      lock = MegaMutex::Lock.new("stolen")
      lock.lock
      memcached.command("delete #{lock.key}")
      thief = held_elsewhere("stolen")
      expect(lock.unlock).to be(false)

      lost = named(received.call, "lost.mega_mutex")
      expect(lost.size).to eq(1)
      expect(lost.first).to include(id: "stolen", key: lock.key, reason: /at release/)
      expect(MegaMutex.get_current_lock("stolen")).to eq(thief.holder) # the thief's lock is untouched
    ensure
      thief&.unlock
    end

    it "does not build or publish a payload when nobody listens" do
      require "active_support"
      require "active_support/notifications"
      expect(MegaMutex::Instrumentation).not_to receive(:instrument)
      holder = held_elsewhere("quiet")
      expect { MegaMutex.with_distributed_mutex("quiet", timeout: 0) { nil } }.to raise_error(MegaMutex::TimeoutError)
      holder.unlock
      MegaMutex.with_distributed_mutex("quiet") { nil }
    end

    it "keeps locking when a subscriber raises, and logs the subscriber's error" do
      log = StringIO.new
      MegaMutex.configure { |c| c.logger = Logger.new(log).tap { |l| l.level = :error } }
      subscribe!
      @subscribers << ActiveSupport::Notifications.subscribe("acquire.mega_mutex") { raise "broken subscriber" }
      expect(MegaMutex.with_distributed_mutex("robust") { :ran }).to eq(:ran)
      expect(MegaMutex.get_current_lock("robust")).to be_nil
      expect(log.string).to match(/ERROR.*a subscriber to acquire\.mega_mutex raised .*broken subscriber/)
    end
  end

  describe "without ActiveSupport" do
    it "loads nothing of it, and locks as usual" do
      out, err, status = run_ruby(<<~RUBY)
        MegaMutex.with_distributed_mutex("no-as") { print MegaMutex.get_current_lock("no-as").nil? ? "free" : "held" }
        lock = MegaMutex::Lock.new("no-as"); lock.lock; lock.unlock
        print " ", defined?(ActiveSupport).inspect, " ", $LOADED_FEATURES.grep(/active_?support/).size
      RUBY
      expect(status).to be_success, err
      expect(out).to eq("held nil 0")
    end

    it "publishes once ActiveSupport::Notifications is loaded after mega_mutex" do
      out, err, status = run_ruby(<<~RUBY)
        MegaMutex.with_distributed_mutex("late") { nil }
        require "active_support"
        require "active_support/notifications"
        names = []
        ActiveSupport::Notifications.subscribe(/mega_mutex/) { |name, *| names << name }
        MegaMutex.with_distributed_mutex("late") { nil }
        print names.join(",")
      RUBY
      expect(status).to be_success, err
      expect(out).to eq("acquire.mega_mutex,release.mega_mutex")
    end
  end

  describe "logging" do
    let(:log) { StringIO.new }
    let(:logger) { Logger.new(log).tap { |l| l.formatter = ->(severity, _, _, message) { "#{severity} #{message}\n" } } }

    before { MegaMutex.configure { |c| c.logger = logger } }

    it "logs one line per lock at debug level, naming the key and the lock id" do
      MegaMutex.with_distributed_mutex("steps") { nil }
      key = Regexp.escape(key_for("steps"))
      lines = log.string.lines
      expect(lines.size).to eq(1)
      expect(lines[0]).to match(/\ADEBUG MegaMutex: released #{key} \(lock_id: \S+\), held [\d.]+ ms after waiting [\d.]+ ms \(1 attempt\)$/)
    end

    it "logs nothing for a reentered lock" do
      MegaMutex.with_distributed_mutex("again") { MegaMutex.with_distributed_mutex("again") { nil } }
      expect(log.string.lines.size).to eq(1)
    end

    it "logs a timeout at debug level, naming the holder" do
      holder = held_elsewhere("wait")
      expect { MegaMutex.with_distributed_mutex("wait", timeout: 0.05) { nil } }.to raise_error(MegaMutex::TimeoutError)
      expect(log.string).to match(/^DEBUG MegaMutex: could not lock #{Regexp.escape(key_for('wait'))} within 0\.05s \(\d+ attempts?\): held by #{Regexp.escape(holder.holder)}$/)
    ensure
      holder&.unlock
    end

    it "says nothing above debug level for a normal lock" do
      logger.level = :info
      MegaMutex.with_distributed_mutex("silent") { nil }
      expect(log.string).to eq("")
    end
  end
end
