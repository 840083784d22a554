# frozen_string_literal: true

require "spec_helper"
require_relative "support/quorum_servers"

# What one uncontended :quorum cycle asks of each server: the take (add +
# one gets of the lock, its fence and the sentinel), the fence (one cas),
# and the release (one cas on the CAS the take read: no read first).
RSpec.describe "The :quorum backend's requests per cycle" do
  let(:servers) { QuorumServers.shared }

  before do
    MegaMutex.configure do |c|
      QuorumServers.configure(c, servers)
      c.namespace = @namespace
    end
  end

  def counters
    servers.map { |s| s.stats.values_at("cmd_get", "cas_hits", "cas_misses", "cmd_set").map(&:to_i) }
  end

  it "reads three keys once per server, and releases with a cas without reading again" do
    MegaMutex.with_distributed_mutex("job") { nil }
    before = counters
    10.times { MegaMutex.with_distributed_mutex("job") { nil } }
    deltas = counters.zip(before).map { |after, was| after.zip(was).map { |a, b| a - b } }
    # [keys read, cas stored, cas refused, store commands] per server for 10 cycles
    expect(deltas).to all(eq([30, 20, 0, 30]))
  end
end
