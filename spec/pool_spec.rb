# frozen_string_literal: true

# The connection pool: what it keeps, what it gives back to the system, and
# what a process out of file descriptors sees. Each example runs in a child
# process, so descriptors can be counted (and limited) without the rest of
# the suite in the way.
RSpec.describe MegaMutex::Pool do
  # Runs `body` in a child with the gem loaded and this example's memcached
  # and namespace, and returns what it printed. In `body`, burst(n) makes n
  # threads hold a client each at the same moment (a barrier), then give
  # them back, and returns the errors raised; limit_leaving(n) is the
  # descriptor limit that leaves n numbers free.
  def run_burst(body)
    script = <<~RUBY
      KEY = "\#{ENV['MM_NAMESPACE']}:pool"
      # Holds one client per thread, all at once; returns the errors raised.
      def burst(n)
        arrived = Queue.new
        go = Queue.new
        errors = Queue.new
        workers = Array.new(n) do
          Thread.new do
            MegaMutex.pool.with do |client|
              client._read(KEY)
              arrived << true
              go.pop
            end
          rescue Exception => e
            errors << e
            arrived << false
          end
        end
        n.times { arrived.pop }
        n.times { go << true }
        workers.each(&:join)
        Array.new(errors.size) { errors.pop }
      end
      # The descriptor limit that leaves exactly `free` numbers to open (a
      # limit bounds the numbers, and descriptors inherited from the parent
      # may leave gaps below the highest one).
      def limit_leaving(free)
        used = Dir.children("/proc/self/fd").map(&:to_i).sort
        limit = 0
        limit += 1 while limit - used.count { |fd| fd < limit } < free
        limit
      end
      #{body}
    RUBY
    out, err, status = run_ruby(script, timeout: 60)
    expect(status).to be_success, "#{out}\n#{err}"
    out
  end

  # Three bursts of 200 threads, each holding a client at the same moment;
  # GC off, so what stays open is kept by the pool, not waiting for the GC.
  # @return [Hash{String => Integer}] descriptors and server connections
  #   left open, beyond those before the bursts
  def after_bursts
    out = run_burst(<<~'RUBY')
      GC.disable
      require "socket"
      server = ENV["MEMCACHE_SERVERS"]
      connections = lambda do
        TCPSocket.open(*server.split(":")) do |s|
          s.write("stats\r\n")
          reply = +""
          reply << s.readpartial(65_536) until reply.end_with?("END\r\n")
          reply[/curr_connections (\d+)/, 1].to_i - 1 # less this one
        end
      end
      kinds = lambda do
        links = Dir.children("/proc/self/fd").map { |fd| File.readlink("/proc/self/fd/#{fd}") rescue "" }
        { "sockets" => links.count { |l| l.start_with?("socket:") }, "eventfds" => links.count { |l| l.include?("eventfd") } }
      end
      MegaMutex.pool.with { |c| c._read(KEY) } # loads what a first use loads
      base = kinds.call
      base_connections = connections.call
      3.times { errors = burst(200); raise "errors: #{errors.inspect}" unless errors.empty? }
      kinds.call.each { |kind, n| puts "#{kind}=#{n - base[kind]}" }
      # The server sees a close a moment later: wait for it, within reason.
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 5
      extra = nil
      loop do
        extra = connections.call - base_connections
        break if extra <= MegaMutex::Pool::MAX_IDLE || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
        sleep 0.02
      end
      puts "connections=#{extra}"
    RUBY
    out.scan(/^(\w+)=(-?\d+)$/).to_h { |k, v| [k, v.to_i] }.tap { |h| expect(h.keys).to include("sockets", "eventfds", "connections"), out }
  end

  it "closes the connections it does not keep: bursts of 200 threads leave #{described_class::MAX_IDLE} open, not 200" do
    left = after_bursts
    # The pool keeps MAX_IDLE clients, one of which was open before the bursts.
    expect(left["sockets"]).to be <= described_class::MAX_IDLE - 1, left.inspect
    # Other processes of this suite may use the same server: a generous
    # bound still tells 64 from 200.
    expect(left["connections"]).to be <= described_class::MAX_IDLE + 8, left.inspect
  end

  it "closes the eventfd of a client it does not keep" do
    left = after_bursts
    expect(left["eventfds"]).to be <= described_class::MAX_IDLE - 1, left.inspect
  end

  it "raises MegaMutex::ConnectionError naming the cause when the process is out of file descriptors, and recovers" do
    out = run_burst(<<~'RUBY')
      MegaMutex.pool.with { |c| c._read(KEY) } # the first client, opened while descriptors are plenty
      soft, hard = Process.getrlimit(:NOFILE)
      Process.setrlimit(:NOFILE, limit_leaving(24), hard) # room for about 12 clients
      errors = burst(60)
      Process.setrlimit(:NOFILE, soft, hard)
      puts "errors=#{errors.size}"
      errors.map { |e| [e.class, e.message] }.uniq.each { |k, m| puts "error=#{k}: #{m}" }
      puts "lock=#{MegaMutex.with_distributed_mutex('after-emfile', timeout: 5) { :ran }}"
    RUBY
    count = out[/errors=(\d+)/, 1].to_i
    expect(count).to be > 0, "the limit was not reached, so this example proves nothing:\n#{out}"
    errors = out.scan(/^error=(.*)$/).flatten
    expect(errors).to all(start_with("MegaMutex::ConnectionError: ")), out
    # A client that cannot be made says why. (One made whose socket then
    # cannot be opened gets libmemcached's word for it, also a ConnectionError.)
    expect(errors).to include(match(/Errno::EMFILE.*out of file descriptors/)), out
    expect(out).to include("lock=ran")
  end

  it "reuses an idle client (no new connection per call) and closes it on close" do
    pool = described_class.new(MegaMutex.configuration)
    first = pool.with { |c| c }
    expect(pool.with { |c| c }).to equal(first)
    expect(first).not_to be_closed
    pool.close
    expect(first).to be_closed
  end

  it "in a forked child, neither keeps nor closes a client the parent opened (closing it would cut the parent's connection)" do
    pool = described_class.new(MegaMutex.configuration)
    inherited = nil
    pool.with do |client|
      client._read("#{@namespace}:fork")
      inherited = client
      pid = fork do
        pool.with { |c| c._read("#{@namespace}:fork") } # a client of its own
        # The child gives back, from inside `with`, a client of the parent's:
        # a later call must not be handed it.
        pool.send(:checkin, client)
        pool.with { |c| c._read("#{@namespace}:fork") }
        own = Array.new(described_class::MAX_IDLE + 1) { pool.send(:checkout) }
        own.each { |c| pool.send(:checkin, c) }
        pool.send(:checkin, client) # with the idle list full, too
        exit!(0)
      rescue Exception => e
        warn "#{e.class}: #{e.message}"
        exit!(1)
      end
      _, status = Process.wait2(pid)
      expect(status).to be_success
    end
    expect(inherited).not_to be_closed
    expect(pool.with { |c| c._read("#{@namespace}:fork") }).to be_nil # the parent's connection still works
  ensure
    pool&.close
  end
end
