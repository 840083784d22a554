# frozen_string_literal: true

require "spec_helper"
require "logger"
require "stringio"
require_relative "support/quorum_servers"

# config.backend = :quorum: its settings, their validation, and the warning
# for servers that may evict.
RSpec.describe "The :quorum backend's configuration" do
  def quorum(servers, **settings)
    MegaMutex.configure do |c|
      c.backend = :quorum
      c.memcache_servers = servers
      settings.each { |k, v| c.public_send("#{k}=", v) }
    end
  end

  it "needs 3 to 15 servers, and says so naming the setting" do
    expect { quorum(%w[a b]) }.to raise_error(ArgumentError, /backend :quorum needs 3 to 15 independent memcache_servers \(got 2: a:11211, b:11211\); an odd number is best/)
    expect { quorum(%w[a a:11211 b]) }.to raise_error(ArgumentError, /got 2/) # the same server twice counts once
    expect { quorum(Array.new(16) { |i| "h#{i}" }) }.to raise_error(ArgumentError, /got 16/)
    expect { quorum(%w[a b c]) }.not_to raise_error
  end

  it "validates quorum_max_ttl (nil: lock_ttl), also from MEGA_MUTEX_QUORUM_MAX_TTL" do
    [0, -1, "2", Float::NAN, MegaMutex::Configuration::MAX_TTL + 1].each do |bad|
      expect { quorum(%w[a b c], quorum_max_ttl: bad) }.to raise_error(ArgumentError, /quorum_max_ttl must be a number of seconds/)
    end
    expect(MegaMutex::Configuration.new.quorum_max_ttl).to be_nil
    expect(quorum(%w[a b c], quorum_max_ttl: 2.5).quorum_max_ttl).to eq(3)
    begin
      ENV["MEGA_MUTEX_QUORUM_MAX_TTL"] = "45"
      expect(MegaMutex::Configuration.new.quorum_max_ttl).to eq(45)
      ENV["MEGA_MUTEX_QUORUM_MAX_TTL"] = "soon"
      expect { MegaMutex::Configuration.new }.to raise_error(ArgumentError, /MEGA_MUTEX_QUORUM_MAX_TTL must be/)
    ensure
      ENV.delete("MEGA_MUTEX_QUORUM_MAX_TTL")
    end
  end

  it "refuses a lock asked with a ttl above quorum_max_ttl, and never runs its block" do
    servers = QuorumServers.shared
    quorum(servers.map(&:address), quorum_max_ttl: QuorumServers::MAX_TTL, lock_ttl: QuorumServers::MAX_TTL)
    ran = false
    expect { MegaMutex.with_distributed_mutex("x", ttl: QuorumServers::MAX_TTL + 1) { ran = true } }
      .to raise_error(ArgumentError, /ttl must be 1 to #{QuorumServers::MAX_TTL} seconds for quorum/)
    expect(ran).to be(false)
  end

  it "logs a server that may evict (started without -M) at warn level, once per process" do
    servers = [Servers::Memcached.new(args: %w[-m 64]).start, *Array.new(2) { Servers::Memcached.new(args: %w[-M]).start }]
    log = StringIO.new
    quorum(servers.map(&:address), quorum_max_ttl: 1, lock_ttl: 1, logger: Logger.new(log), io_timeout: 0.3)
    2.times { MegaMutex.with_distributed_mutex("x", timeout: 0) { nil } rescue MegaMutex::Error }
    MegaMutex.configuration.new_client.close # a second client: no second warning
    warnings = log.string.lines.grep(/WARN/)
    expect(warnings.size).to eq(1), log.string
    expect(warnings.first).to include("memcached #{servers[0].address} may evict items (started without -M)")
  ensure
    servers&.each(&:stop)
  end

  it "a server that has just started does not count: with two of three young, ConnectionError says when they will" do
    servers = Array.new(3) { Servers::Memcached.new(args: %w[-M]).start }
    quorum(servers.map(&:address), quorum_max_ttl: 30, lock_ttl: 30)
    expect { MegaMutex.with_distributed_mutex("x") { raise "ran" } }
      .to raise_error(MegaMutex::ConnectionError, /0 of the 2 needed answered and count.*restarted or forgot its items recently: counts in \d+ s \(quorum_max_ttl\)/)
  ensure
    servers&.each(&:stop)
  end

  it "Native::Client._evicting_servers names the memcached servers started without -M (for the :memcached store's log)" do
    evicting = Servers::Memcached.new(args: %w[-m 64]).start
    kept = Servers::Memcached.new(args: %w[-M]).start
    addresses = [evicting, kept].map { |s| ["127.0.0.1", s.port] }
    expect(MegaMutex::Native::Client._evicting_servers(addresses, 500, 500))
      .to eq(["#{evicting.address} may evict items (started without -M): a lock on it can vanish before its lease ends"])
    expect(MegaMutex::Native::Client._evicting_servers([["127.0.0.1", kept.port]], 500, 500)).to eq([])
    kept.stop # a server that does not answer is left out
    expect(MegaMutex::Native::Client._evicting_servers([["127.0.0.1", kept.port]], 500, 500)).to eq([])
    expect { MegaMutex::Native::Client._evicting_servers([], 500, 500) }.to raise_error(ArgumentError, /1 to 15/)
  ensure
    [evicting, kept].compact.each(&:stop)
  end
end
