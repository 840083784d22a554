# frozen_string_literal: true

require "logger"
require "stringio"

RSpec.describe "leases" do
  before { MegaMutex.configure { |c| c.lock_ttl = 1 } }

  it "are renewed while the block runs: a block lasting 4 x lock_ttl keeps exclusive ownership" do
    stolen = []
    stop = false
    result = MegaMutex.with_distributed_mutex("long") do
      token = MegaMutex.get_current_lock("long")
      watcher = Thread.new do
        until stop
          thief = MegaMutex::Lock.new("long")
          if thief.try_lock
            stolen << monotonic
            thief.unlock
          end
          sleep 0.05
        end
      end
      deadline = monotonic + 4
      sleep 0.1 while monotonic < deadline
      stop = true
      watcher.join
      MegaMutex.get_current_lock("long") == token
    end
    expect(stolen).to be_empty
    expect(result).to be(true)
  end

  # The C renewer's threads, by their names in /proc (they are not Ruby threads).
  def renewer_lanes
    Dir["/proc/self/task/*/comm"].count { |path| (File.read(path) rescue "").chomp == "mm renewer" }
  end

  it "are served by one renewer thread per server, whatever the number of locks" do
    before = MegaMutex::Renewer.current.size # locks other examples left held
    lanes = renewer_lanes
    locks = Array.new(5) { |i| MegaMutex::Lock.new("many-#{i}").tap(&:lock) }
    expect(renewer_lanes - lanes).to be <= 1 # the suite's server may have its lane already
    expect(renewer_lanes).to be >= 1
    expect(MegaMutex::Renewer.current.size).to eq(before + 5)
    locks.each(&:unlock)
    expect(MegaMutex::Renewer.current.size).to eq(before)
  end

  it "free themselves after a holder is killed with kill -9, within lock_ttl + 2 s" do
    r, w = IO.pipe
    env = { "MEMCACHE_SERVERS" => memcached.address, "MM_NAMESPACE" => @namespace }
    script = "$LOAD_PATH.unshift(#{File.join(SpecHelpers::ROOT, 'lib').inspect}); require 'mega_mutex'; " \
             "MegaMutex.configure { |c| c.namespace = ENV['MM_NAMESPACE']; c.lock_ttl = 1 }; $stdout.sync = true; " \
             "MegaMutex.with_distributed_mutex('crash') { puts 'HOLDING'; sleep }"
    pid = Process.spawn(env, RbConfig.ruby, "-e", script, out: w)
    w.close
    expect(r.gets).to eq("HOLDING\n")
    sleep 1.5 # the child's renewer has extended the lease at least once
    expect(MegaMutex.get_current_lock("crash")).to match(/:#{pid}:/)
    Process.kill(:KILL, pid)
    Process.wait(pid)
    killed_at = monotonic
    wait_for(within: 5, every: 0.05, message: "the crashed holder's lock to expire") { MegaMutex.get_current_lock("crash").nil? }
    expect(monotonic - killed_at).to be <= 1 + 2 + 1 # lock_ttl, the wire margin, slack for a slow machine
    expect(MegaMutex.with_distributed_mutex("crash", timeout: 0) { :taken_over }).to eq(:taken_over)
  ensure
    r&.close
  end

  describe "a holder that exits gracefully" do
    # A child takes locks it never gives back itself (Lock#lock, and a thread
    # that never unwinds), then ends as `how` says; with the default lock_ttl
    # the lease would keep them 32 s.
    def exit_holding(how)
      env = { "MEMCACHE_SERVERS" => memcached.address, "MM_NAMESPACE" => @namespace }
      script = <<~RUBY
        $LOAD_PATH.unshift(#{File.join(SpecHelpers::ROOT, 'lib').inspect}); require 'mega_mutex'
        MegaMutex.configure { |c| c.namespace = ENV['MM_NAMESPACE'] }
        $stdout.sync = true
        MegaMutex::Lock.new('left-by-lock').lock
        taken = Queue.new
        Thread.new { MegaMutex::Lock.new('left-by-thread').lock; taken << true; sleep }
        taken.pop # held: its lock call returned (one still being taken as the process exits is left to its lease)
        puts 'HOLDING'
        #{how}
      RUBY
      r, w = IO.pipe
      pid = Process.spawn(env, RbConfig.ruby, "-e", script, out: w)
      w.close
      expect(r.gets).to eq("HOLDING\n")
      yield pid if block_given?
      Process.wait(pid)
      # Right away, not after the lease: the exit gave them back.
      expect(%w[left-by-lock left-by-thread].map { |id| MegaMutex.get_current_lock(id) }).to eq([nil, nil])
    ensure
      r&.close
    end

    it "gives back what it holds when the script ends" do
      exit_holding("nil")
    end

    it "gives back what it holds on an uncaught exception" do
      exit_holding("raise 'boom'")
    end

    it "gives back what it holds on SIGTERM (Ruby's default handler)" do
      exit_holding("sleep") { |pid| Process.kill(:TERM, pid) }
    end
  end

  describe "a lease lost while the block runs" do
    let(:log) { StringIO.new }

    before { MegaMutex.configure { |c| c.logger = Logger.new(log) } }

    def lose_lease(lock)
      memcached.command("delete #{lock.key}") # as a flush_all, eviction or restart would
      wait_for(within: 3, message: "the renewer to notice") { lock.lost? }
    end

    it "is reported: lost? turns true, an error is logged, and LockLostError is raised after the block" do
      after_loss = nil
      expect do
        MegaMutex.with_distributed_mutex("lose") do |lock|
          expect(lock).not_to be_lost
          lose_lease(lock)
          after_loss = :block_finished
        end
      end.to raise_error(MegaMutex::LockLostError, /"lose".*not found when renewing/) { |e| expect(e).to be_a(MegaMutex::Error) }
      expect(after_loss).to eq(:block_finished)
      expect(log.string).to match(/ERROR.*lost lock .*lose/)
    end

    it "is only logged with on_lock_lost = :log" do
      MegaMutex.configure { |c| c.on_lock_lost = :log }
      expect(MegaMutex.with_distributed_mutex("lose") { |lock| lose_lease(lock) && :value }).to eq(:value)
      expect(log.string).to match(/ERROR.*lost lock/)
    end

    it "is detected at release when someone else holds it by then" do
      lock = MegaMutex::Lock.new("lose")
      expect do
        lock.synchronize do
          memcached.command("delete #{lock.key}")
          thief = held_elsewhere("lose")
          expect(thief).to be_owned
        end
      end.to raise_error(MegaMutex::LockLostError)
      expect(lock).to be_lost
    end

    it "still works with a zero-argument lambda block" do
      body = -> { :ran }
      expect(MegaMutex.with_distributed_mutex("lambda", &body)).to eq(:ran)
    end
  end

  it "rejects a bad on_lock_lost" do
    expect { MegaMutex.configure { |c| c.on_lock_lost = :ignore } }.to raise_error(ArgumentError, /on_lock_lost/)
  end
end
