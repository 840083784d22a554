# frozen_string_literal: true

# Renewal capacity: how many leases one process keeps alive.
#
#   bundle exec ruby bench/renewal.rb [LOCKS] [TTL] [SECONDS] [SERVERS]
#
# Takes LOCKS locks (lock_ttl TTL) spread over SERVERS memcached servers,
# holds them for SECONDS, and counts the leases reported lost, the renewals
# the servers saw (cas commands) and the renewals per second that took.
# Every lease needs a renewal each TTL/3 s: LOCKS * 3 / TTL renewals/s.
$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "mega_mutex"
require_relative "servers"

locks_n = Integer(ARGV[0] || 10_000)
ttl = Integer(ARGV[1] || 1)
seconds = Float(ARGV[2] || 10)
servers_n = Integer(ARGV[3] || 1)

servers = Array.new(servers_n) { Servers::Memcached.new.start }
MegaMutex.configure do |c|
  c.memcache_servers = servers.map(&:address)
  c.lock_ttl = ttl
  c.namespace = "renewal"
end

t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
locks = Array.new(locks_n) { |i| MegaMutex::Lock.new("lease-#{i}").tap(&:lock) }
took = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0
cas_before = servers.sum { |s| s.stats.values_at("cas_hits", "cas_misses", "cas_badval").sum(&:to_i) }
sleep seconds
cas = servers.sum { |s| s.stats.values_at("cas_hits", "cas_misses", "cas_badval").sum(&:to_i) } - cas_before
lost = locks.count(&:lost?)
locks.each { |l| l.unlock rescue MegaMutex::Error } # rubocop:disable Style/RescueModifier

needed = locks_n * 3.0 / ttl
puts format("%d locks, lock_ttl %d s, %d server(s), held %.0f s (taking them: %.1f s)", locks_n, ttl, servers_n, seconds, took)
puts format("renewals needed  %8.0f /s", needed)
puts format("renewals done    %8.0f /s (cas seen by the servers)", cas / seconds)
puts format("leases lost      %8d (%.1f %%)", lost, 100.0 * lost / locks_n)
