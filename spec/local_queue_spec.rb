# frozen_string_literal: true

require "logger"
require "stringio"

# Threads of one process waiting on one key queue in C
# (ext/mega_mutex/local_queue.c): one of them asks the server, the others
# wait for their turn. Only the server grants a lock; the queue decides who
# of this process asks. Counted with memcached's own stats on a private
# server, compared with one waiter on the same machine in the same example.
RSpec.describe "threads of one process waiting on one key" do
  let(:server) { MemcachedServer.new.start }

  before { MegaMutex.configure { |c| c.memcache_servers = [server.address] } }
  after { server.stop }

  # Holds `id` from outside this process's MegaMutex: a plain item, as a
  # holder elsewhere leaves it.
  def hold_outside(id, token = "elsewhere:1:holder")
    server.command("set #{key_for(id)} 0 60 #{token.bytesize}\r\n#{token}")
  end

  def free_outside(id)
    server.command("delete #{key_for(id)}")
  end

  def gets
    server.stats["cmd_get"].to_i
  end

  # `count` threads each wait up to `timeout` for `id`; returns the gets the
  # server answered meanwhile and the errors the threads ended with.
  def wait_in_threads(id, count, timeout)
    before = gets
    threads = Array.new(count) do
      Thread.new do
        MegaMutex::Lock.new(id, timeout: timeout).lock
        :taken
      rescue MegaMutex::TimeoutError => e
        e
      end
    end
    results = threads.map(&:value)
    [gets - before, results]
  end

  it "costs the server about what one waiter costs: 8 threads on a held key vs 1 thread" do
    hold_outside("busy")
    one, = wait_in_threads("busy", 1, 1.0)
    eight, results = wait_in_threads("busy", 8, 1.0)
    expect(results).to all(be_a(MegaMutex::TimeoutError))
    # Without the queue each thread polls on its own: about 8 times one's.
    # With it: one poller, plus one last try at the deadline per thread.
    expect(eight).to be <= 2 * one + 8
    expect(one).to be >= 10 # the single waiter really polled
  end

  it "gives a queued thread that times out the holder seen at its last try" do
    hold_outside("held", "elsewhere:7:abcdef")
    _, results = wait_in_threads("held", 4, 0.3)
    expect(results).to all(be_a(MegaMutex::TimeoutError))
    expect(results.map(&:holder)).to all(eq("elsewhere:7:abcdef"))
  end

  it "hands the lock to every queued thread in turn when the holder is another process" do
    id = "other-process"
    script = <<~RUBY
      MegaMutex.with_distributed_mutex(#{id.inspect}) do
        $stdout.puts "held"; $stdout.flush
        $stdin.gets
      end
    RUBY
    env = { "MEMCACHE_SERVERS" => server.address, "MM_NAMESPACE" => MegaMutex.configuration.namespace }
    prelude = "$LOAD_PATH.unshift(#{File.join(SpecHelpers::ROOT, 'lib').inspect}); require 'mega_mutex'; " \
              "MegaMutex.configure { |c| c.namespace = ENV['MM_NAMESPACE'] };"
    Open3.popen2(env, RbConfig.ruby, "-e", prelude + script) do |stdin, stdout, wait|
      expect(stdout.gets).to eq("held\n")
      order = Queue.new
      threads = Array.new(6) do |i|
        Thread.new do
          MegaMutex.with_distributed_mutex(id, timeout: 30) do
            order << i
            Thread.pass
          end
        end
      end
      wait_for(message: "the threads to wait") { threads.all? { |t| t.status == "sleep" } }
      expect(order).to be_empty # nobody got in while the other process held it
      stdin.puts "release"
      stdin.close
      expect(wait.value).to be_success
      threads.each(&:join)
      expect(order.size).to eq(6)
    end
    expect(MegaMutex::Lock.new(id).try_lock.tap { |t| MegaMutex::Lock.new(id) if t }).to be(true)
  ensure
    MegaMutex::Lock.holds.clear
  end

  it "leaves nothing behind when queued threads and the asker are interrupted" do
    id = "interrupted"
    hold_outside(id)
    started = Queue.new
    threads = Array.new(5) do
      Thread.new do
        started << true
        MegaMutex.with_distributed_mutex(id, timeout: 30) { :ran }
      rescue RuntimeError => e
        e.message
      end
    end
    5.times { started.pop }
    wait_for(message: "the threads to wait") { threads.all? { |t| t.status == "sleep" } }
    # Interrupt the first three (the asker among them, whichever it is; a
    # queued thread for sure) and let them end.
    threads.first(3).each { |t| t.raise(RuntimeError, "stop waiting") }
    expect(threads.first(3).map(&:value)).to all(eq("stop waiting"))
    # The two left still wait; once the key is free both get it.
    free_outside(id)
    expect(threads.last(2).map(&:value)).to all(eq(:ran))
    # A newcomer is not stuck behind a queue of threads that left.
    hold_outside(id)
    late = Thread.new { MegaMutex.with_distributed_mutex(id, timeout: 30) { :late } }
    wait_for(message: "the newcomer to wait") { late.status == "sleep" }
    free_outside(id)
    expect(late.value).to eq(:late)
    expect(server.get(key_for(id))).to be_nil
  end

  it "starts a forked child with no queue: the parent's waiting threads do not hold its own waits up" do
    id = "forked"
    hold_outside(id)
    waiters = Array.new(3) { Thread.new { MegaMutex.with_distributed_mutex(id, timeout: 30) { :ran } } }
    wait_for(message: "the parent's threads to wait") { waiters.all? { |t| t.status == "sleep" } }
    r, w = IO.pipe
    pid = fork do
      r.close
      # The parent's asker does not exist here. Queued behind it, the child
      # would make one try at its deadline; asking itself, it polls.
      log = StringIO.new
      MegaMutex.configure { |c| c.logger = Logger.new(log).tap { |l| l.level = Logger::DEBUG } }
      begin
        MegaMutex::Lock.new(id, timeout: 0.5).lock
        w.write("taken")
      rescue MegaMutex::TimeoutError
        w.write(log.string[/\((\d+) attempts?\)/, 1] || log.string)
      rescue Exception => e # rubocop:disable Lint/RescueException
        w.write("#{e.class}: #{e.message}")
      end
      w.close
      exit!(0)
    end
    w.close
    attempts = r.read
    Process.wait(pid)
    expect(attempts).to match(/\A\d+\z/)
    expect(Integer(attempts)).to be >= 4 # 2, 4, 8, 16 ms... within 0.5 s: about 10
    free_outside(id)
    expect(waiters.map(&:value)).to all(eq(:ran))
  ensure
    r&.close
  end
end
