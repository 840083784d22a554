# frozen_string_literal: true

require "spec_helper"
require "tempfile"
require_relative "support/quorum_servers"

# Fencing tokens (the :quorum backend): an Integer that strictly increases
# across successive holders of one id - across threads, processes, a holder
# paused past its lease, and a wall clock that is behind the fences.
RSpec.describe "Fencing tokens" do
  let(:servers) { QuorumServers.shared }

  before do
    MegaMutex.configure do |c|
      QuorumServers.configure(c, servers)
      c.namespace = @namespace
    end
  end

  it "gives each take an Integer, published on the Lock, larger than the one before" do
    tokens = Array.new(30) { MegaMutex.with_distributed_mutex("job") { |lock| lock.fencing_token } }
    expect(tokens).to all(be_an(Integer))
    expect(tokens.each_cons(2)).to all(satisfy { |a, b| b > a })
  end

  it "strictly increases in section order across 4 processes hammering one id" do
    log = Tempfile.new("fences")
    pids = Array.new(4) do
      fork do
        # O_APPEND, one write(2) a line: the file's order is the sections' order.
        File.open(log.path, File::WRONLY | File::APPEND) do |f|
          20.times do
            MegaMutex.with_distributed_mutex("job", timeout: 30) do |lock|
              f.syswrite("#{Process.pid} #{lock.fencing_token}\n")
            end
          end
        end
        exit!(0)
      rescue StandardError => e
        warn e.full_message
        exit!(1)
      end
    end
    statuses = pids.map { |pid| Process.wait2(pid).last }
    expect(statuses).to all(be_success)
    tokens = File.readlines(log.path).map { |line| Integer(line.split.last) }
    expect(tokens.size).to eq(80)
    expect(tokens.each_cons(2).reject { |a, b| b > a }).to eq([])
  ensure
    log&.close!
  end

  it "gives a holder paused past its lease a smaller token than its successor's" do
    reader, writer = IO.pipe
    pid = fork do
      reader.close
      lock = MegaMutex::Lock.new("job")
      lock.lock
      writer.syswrite("#{lock.fencing_token}\n")
      sleep # paused below, then killed
    end
    writer.close
    paused = Integer(reader.gets)
    Process.kill(:STOP, pid) # no renewals from here on: the lease runs out
    successor = MegaMutex.with_distributed_mutex("job", timeout: 30) { |lock| lock.fencing_token }
    expect(successor).to be > paused
  ensure
    if pid
      Process.kill(:KILL, pid)
      Process.wait(pid)
    end
  end

  it "grows past the fences the servers kept, even when the wall clock is behind them" do
    key = key_for("job")
    future = 10**17 # microseconds: the year 5138
    fence = "~f#{key}"
    servers.values_at(0, 1).each { |s| s.command("set #{fence} 0 0 #{future.to_s.size}\r\n#{future}") }
    token = MegaMutex.with_distributed_mutex("job") { |lock| lock.fencing_token }
    expect(token).to eq(future + 1)
    expect(MegaMutex.with_distributed_mutex("job") { |lock| lock.fencing_token }).to eq(future + 2)
  end

  it "passes the token to mega_mutex exec's command as MEGA_MUTEX_FENCING_TOKEN" do
    exe = File.join(SpecHelpers::ROOT, "exe", "mega_mutex")
    rubyopt = ENV["RUBYOPT"].to_s.split.reject { |opt| opt.include?("bundler") }.join(" ")
    env = { "RUBYOPT" => rubyopt, "BUNDLE_GEMFILE" => nil, "MEGA_MUTEX_QUORUM_MAX_TTL" => QuorumServers::MAX_TTL.to_s,
            "MEGA_MUTEX_FENCING_TOKEN" => "stale" }
    argv = [RbConfig.ruby, exe, "exec", "job", "--namespace", @namespace, "--backend", "quorum",
            "--servers", servers.map(&:address).join(","), "--ttl", QuorumServers::MAX_TTL.to_s,
            "--", "sh", "-c", "echo $MEGA_MUTEX_FENCING_TOKEN"]
    first, err, status = Open3.capture3(env, *argv)
    expect(status).to be_success, err
    second, = Open3.capture3(env, *argv)
    expect(first).to match(/\A\d+\n\z/)
    expect(Integer(second)).to be > Integer(first)
  end

  describe "on :memcached (one server: the weaker guarantee)" do
    let(:server) { Servers::Memcached.new(args: %w[-M]).start }

    before do
      MegaMutex.configure do |c|
        c.backend = :memcached
        c.memcache_servers = [server.address]
        c.namespace = @namespace
        c.lock_ttl = 30
      end
    end

    after { server.stop }

    it "gives each holder a larger token than the one before, across threads and processes" do
      tokens = Array.new(10) { MegaMutex.with_distributed_mutex("job") { |lock| lock.fencing_token } }
      tokens << Thread.new { MegaMutex.with_distributed_mutex("job") { |lock| lock.fencing_token } }.value
      reader, writer = IO.pipe
      pid = fork do
        reader.close
        writer.syswrite(MegaMutex.with_distributed_mutex("job") { |lock| lock.fencing_token }.to_s)
        exit!(0)
      end
      writer.close
      tokens << Integer(reader.read)
      Process.wait(pid)
      tokens << MegaMutex.with_distributed_mutex("job") { |lock| lock.fencing_token }
      expect(tokens).to all(be_an(Integer))
      expect(tokens.each_cons(2).reject { |a, b| b > a }).to eq([])
    end

    it "counts attempts that found the lock held too, so a waiter's later take is larger still" do
      holder = held_elsewhere("job")
      first = holder.fencing_token
      expect { MegaMutex.with_distributed_mutex("job", timeout: 0) { nil } }.to raise_error(MegaMutex::TimeoutError)
      holder.unlock
      expect(MegaMutex.with_distributed_mutex("job") { |lock| lock.fencing_token }).to be > first + 1
    end

    it "starts again from the wall clock after the server restarted empty: larger while the clocks are right" do
      before = MegaMutex.with_distributed_mutex("job") { |lock| lock.fencing_token }
      server.restart
      after = MegaMutex.with_distributed_mutex("job", timeout: 5) { |lock| lock.fencing_token }
      expect(after).to be > before
      now_us = Process.clock_gettime(Process::CLOCK_REALTIME, :microsecond)
      expect(after).to be_within(60_000_000).of(now_us) # seeded from the clock, not from 1
    end
  end
end
