# frozen_string_literal: true

require "spec_helper"
require "timeout"

# A take that MariaDB refuses because it would deadlock (ER_LOCK_DEADLOCK)
# has a status of its own in the store interface (MM_ERR_DEADLOCK, store.h),
# which the native client raises as MegaMutex::DeadlockError - a
# ServerError - naming the mutex id that the take's state carries (a Lock's
# hold has @id), with no message matching anywhere.
RSpec.describe "MariaDB deadlock status (MM_ERR_DEADLOCK -> DeadlockError)" do
  let(:db) { Servers::MariaDB.shared }
  let(:key) { "#{@namespace}:d" }

  before { skip "mariadbd is not installed" unless Servers::MariaDB.available? }

  def client
    c = MegaMutex::Native::Client.mysql("127.0.0.1", db.port, nil, "root", nil, nil, 2000, 2000, 30)
    (@clients ||= []) << c
    c
  end

  after { @clients&.each { |c| c.close unless c.closed? } }

  # A state as a Lock's hold gives one: @id is the mutex id.
  def state(id = nil)
    s = Object.new
    s.instance_variable_set(:@id, id) unless id.nil?
    s
  end

  def take(client, key, token, timeout, into: state)
    client._acquire(into, key, token, 30, timeout, 0.002, 0.05)
  end

  # a holds k1 and waits for k2; b holds k2: b's wait for k1 closes the
  # cycle. Yields b's take; a's wait ends once b gives k2 back.
  def with_cycle(a, b)
    expect(take(a, "#{key}1", "tok-a1", 0)).to be(true)
    expect(take(b, "#{key}2", "tok-b2", 0)).to be(true)
    waiter = Thread.new { take(a, "#{key}2", "tok-a2", 30) }
    wait_for(within: 30, message: "a to wait in GET_LOCK") { db.sessions.any? { |_, _, info| info.include?("GET_LOCK") } }
    yield
    expect(b._read("#{key}2")).to eq("tok-b2") # the victim keeps what it held
    expect(b._release("#{key}2", "tok-b2", nil)).to be(true)
    expect(Timeout.timeout(30) { waiter.value }).to be(true)
  end

  it "raises DeadlockError with the state's @id, a ServerError whose message names the key" do
    a = client
    b = client
    with_cycle(a, b) do
      expect { take(b, "#{key}1", "tok-b1", 30, into: state([:job, 42])) }.to raise_error(MegaMutex::DeadlockError) { |e|
        expect(e).to be_a(MegaMutex::ServerError)
        expect(e.id).to eq([:job, 42])
        expect(e.message).to include("#{key}1").and include("ER_LOCK_DEADLOCK")
      }
    end
  end

  it "raises DeadlockError with id nil when the state carries none, and the session stays usable" do
    a = client
    b = client
    with_cycle(a, b) do
      expect { take(b, "#{key}1", "tok-b1", 30) }.to raise_error(MegaMutex::DeadlockError) { |e| expect(e.id).to be_nil }
    end
    expect(take(b, "#{key}3", "tok-b3", 0)).to be(true) # same client, after the deadlock
    expect(b._read("#{key}3")).to eq("tok-b3")
  end
end
